"""Blocking calls (HTTP to the portal) awaited from the node's event loop without holding up its exit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a daemon thread of its own and await its result.

    Unlike :func:`asyncio.to_thread`, a call still blocked when the node stops (a portal that accepts
    connections and never answers, up to the call's own timeout) does not keep the process alive:
    ``asyncio.run`` waits for the default executor's threads at exit, and the interpreter joins them,
    whereas a daemon thread is simply abandoned. Cancelling the awaiting task abandons the call too.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def work() -> None:
        result, error = None, None
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task, which decides
            error = exc
        try:
            loop.call_soon_threadsafe(_settle, future, result, error)
        except RuntimeError:  # the loop closed while the call was blocked: nobody is waiting
            pass

    threading.Thread(target=work, name=f"blocking-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await future
