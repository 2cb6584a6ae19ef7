"""Stopping a node on SIGTERM or Ctrl-C on every platform.

On POSIX the event loop runs the stop itself (``loop.add_signal_handler``). Windows' event loops
have no ``add_signal_handler`` (it raises ``NotImplementedError``); there a plain ``signal.signal``
handler hands the stop to the loop with ``call_soon_threadsafe``, which also wakes a loop waiting
in ``select``. Ctrl-C (SIGINT) and Ctrl-Break (SIGBREAK) then ask for the same graceful stop; a
second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger("swarmnode.node")


@contextlib.contextmanager
def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> Iterator[str]:
    """Call ``stop`` on the loop when the process is asked to end, for the duration of the block.

    Args:
        loop: the running event loop.
        stop: what ends serving gracefully (``Node.stop``); called on the loop's thread.

    Yields:
        ``"loop"`` when the loop handles the signals, ``"signal"`` with the ``signal.signal`` fallback.
    """
    try:
        loop.add_signal_handler(signal.SIGTERM, stop)
    except (NotImplementedError, RuntimeError):  # Windows (or a loop outside the main thread)
        pass
    else:
        try:
            yield "loop"
        finally:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGTERM)
        return
    names = ["SIGTERM", "SIGINT", "SIGBREAK"]  # SIGBREAK: Ctrl-Break, Windows only
    signums = [getattr(signal, name) for name in names if hasattr(signal, name)]
    requested = []

    def _handler(signum, frame) -> None:
        if requested and signum == signal.SIGINT:  # a second Ctrl-C: stop waiting for the goodbyes
            raise KeyboardInterrupt
        requested.append(signum)
        log.info("signal %d: stopping", signum)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(stop)

    previous = {}
    for signum in signums:
        with contextlib.suppress(ValueError, OSError):
            previous[signum] = signal.signal(signum, _handler)
    try:
        yield "signal"
    finally:
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler)
