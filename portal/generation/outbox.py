"""A generation's replies on their way from its worker thread to the channel layer, in order.

The swarm client runs in a worker thread; the channel layer lives on the gateway's event loop. Waiting
for the loop to send every token held the worker thread (and, through the client's batched LM head, every
other generation batched with it) for as long as the loop was busy with websockets. So token replies do
not wait: the worker queues them and goes on decoding while the loop sends. Token replies still queued
when the next one comes are merged into one (text joined, ``logprobs`` entries concatenated, the latest
``completion_tokens``): a busy loop or channel layer sends fewer, larger messages instead of holding up
the swarm. The other replies (``gateway.started``, ``gateway.done``) wait until everything before them
and they themselves are sent, as before. A failed send (the requester's channel full or gone, a send
slower than the timeout) sets ``cancelled`` and drops the rest: the next emit raises :class:`Cancelled`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable

from portal.generation.streaming import Cancelled

TOKEN = "gateway.token"


class Outbox:
    """One generation's ordered replies, sent by the event loop, queued by the worker thread.

    Args:
        loop: the event loop that owns the channel layer.
        send: ``send(kind, **fields)``, a coroutine function sending one reply.
        cancelled: the generation's cancel event (set when a send fails).
        timeout: seconds one send may take, and that a non-token emit waits for its reply to go out.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[..., Awaitable[None]],
        cancelled: threading.Event,
        timeout: float,
    ) -> None:
        self.loop = loop
        self.send = send
        self.cancelled = cancelled
        self.timeout = timeout
        self.sent = 0  # messages that went out (fewer than the tokens when some were merged)
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, dict]] = deque()
        self._flushing = False
        self._idle = threading.Event()
        self._idle.set()
        self._failed: str | None = None
        self._task: asyncio.Task | None = None  # the running flush (a reference keeps it from being collected)

    def emit(self, kind: str, **fields) -> None:
        """Queue one reply (called from the worker thread); a non-token reply returns once it is sent.

        Raises:
            Cancelled: an earlier send failed, this one did not go out in time, or the loop is gone.
        """
        self._check()
        with self._lock:
            last = self._queue[-1] if self._queue else None
            if kind == TOKEN and last is not None and last[0] == TOKEN:
                _merge(last[1], fields)
            else:
                self._queue.append((kind, dict(fields)))
            self._idle.clear()
            start, self._flushing = not self._flushing, True
        if start:
            try:
                self.loop.call_soon_threadsafe(self._start)
            except RuntimeError:  # the loop is closed: the gateway stopped
                self._fail("the gateway stopped")
        if kind != TOKEN:
            self.drain()

    def drain(self) -> None:
        """Wait (in the worker thread) until every queued reply is sent.

        Raises:
            Cancelled: a send failed, or they did not all go out within the timeout.
        """
        if not self._idle.wait(self.timeout):
            self._fail("the requester stopped reading replies")
        self._check()

    def _check(self) -> None:
        if self._failed is not None:
            self.cancelled.set()
            raise Cancelled(self._failed)
        if self.loop.is_closed():
            self._fail("the gateway stopped")
            raise Cancelled("the gateway stopped")

    def _fail(self, why: str) -> None:
        with self._lock:
            if self._failed is None:
                self._failed = why
            self._queue.clear()
            self._flushing = False
            self._idle.set()
        self.cancelled.set()

    def _start(self) -> None:
        self._task = self.loop.create_task(self._flush())

    async def _flush(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._failed is not None:
                    self._flushing = False
                    self._idle.set()
                    return
                kind, fields = self._queue.popleft()  # off the queue: later tokens no longer merge into it
            try:
                await asyncio.wait_for(self.send(kind, **fields), self.timeout)
            except Exception as exc:  # the requester's channel is full or gone: it stopped listening
                self._fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                return
            self.sent += 1


def _merge(into: dict, fields: dict) -> None:
    """Fold a later token reply into a queued one."""
    into["text"] = into.get("text", "") + fields.get("text", "")
    if "completion_tokens" in fields:
        into["completion_tokens"] = fields["completion_tokens"]
    if "logprobs" in fields or "logprobs" in into:
        into["logprobs"] = list(into.get("logprobs") or []) + list(fields.get("logprobs") or [])
