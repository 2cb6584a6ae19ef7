"""The gateway: takes generation requests off the channel layer and streams the answers back.

Run it as its own process (``manage.py run_gateway``: one or more per machine, sharing the work
over Redis) or, in the embedded demo (in-memory channel layer), inside the daphne process
(:func:`ensure_embedded_gateway`). Either way the same :class:`Gateway` runs: an asyncio loop that
reads requests and cancels, and a thread per running generation (the swarm client is synchronous)
that runs :func:`portal.generation.streaming.serve_request`. Message formats: :mod:`portal.generation.protocol`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connections

from portal.generation.pool import ModelPool, SwarmUnavailable, shared_pool
from portal.generation.protocol import CONTROL_GROUP, BadRequest, GenerationRequest
from portal.generation.streaming import Cancelled, cancelled_before_start, error_reply, serve_request

log = logging.getLogger("portal.generation.gateway")

EARLY_CANCEL_TTL_S = 300.0  # remember cancels of requests not received yet this long
SEND_TIMEOUT_S = 10.0


class Gateway:
    """Serves generation requests from ``channel`` with at most ``concurrency`` running at once.

    A full gateway stops reading the shared channel, so with several gateways the free ones take
    the waiting requests.
    """

    def __init__(self, pool: ModelPool, channel: str | None = None, concurrency: int | None = None) -> None:
        self.pool = pool
        self.channel = channel or settings.CHAT_GATEWAY_CHANNEL
        self.concurrency = concurrency or settings.CHAT_GATEWAY_CONCURRENCY
        self.running: dict[str, threading.Event] = {}
        self.early_cancels: dict[str, float] = {}
        self.served = 0

    async def run(self) -> None:
        """Serve until cancelled; then stop every running generation (their sessions close)."""
        self.layer = get_channel_layer()
        self.loop = asyncio.get_running_loop()
        self.slots = asyncio.Semaphore(self.concurrency)
        self.executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="gateway")
        self.control = await self.layer.new_channel("gateway-control.")
        await self.layer.group_add(CONTROL_GROUP, self.control)
        tasks: set[asyncio.Task] = set()
        control = asyncio.create_task(self._serve_control())
        log.info("gateway reading %s (up to %d generations at once)", self.channel, self.concurrency)
        try:
            while True:
                await self.slots.acquire()
                try:
                    message = await self.layer.receive(self.channel)
                except BaseException:
                    self.slots.release()
                    raise
                task = asyncio.create_task(self._handle(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            control.cancel()
            for event in self.running.values():
                event.set()
            for task in list(tasks):
                task.cancel()
            self.executor.shutdown(wait=False, cancel_futures=True)
            try:
                await asyncio.shield(self.layer.group_discard(CONTROL_GROUP, self.control))
            except Exception:  # the loop is going away; the group entry expires by itself
                pass

    async def _serve_control(self) -> None:
        while True:
            message = await self.layer.receive(self.control)
            if message.get("type") != "gateway.cancel" or not isinstance(message.get("id"), str):
                continue
            event = self.running.get(message["id"])
            if event is not None:
                event.set()
            else:
                now = time.monotonic()
                self.early_cancels = {k: t for k, t in self.early_cancels.items() if now - t < EARLY_CANCEL_TTL_S}
                self.early_cancels[message["id"]] = now

    async def _handle(self, message: dict) -> None:
        reply_to = message.get("reply_to")
        request_id = message.get("id")
        try:
            if not isinstance(reply_to, str) or not reply_to or not isinstance(request_id, str):
                log.warning("dropped a request without reply_to/id: %r", {k: message.get(k) for k in ("type", "id")})
                return
            if self.early_cancels.pop(request_id, None) is not None:
                await self._send(reply_to, "gateway.done", request_id, **cancelled_before_start())
                return
            cancelled = self.running.setdefault(request_id, threading.Event())
            try:
                request = GenerationRequest.from_message(message)
                await self.loop.run_in_executor(self.executor, self._generate, request, cancelled)
            except BadRequest as exc:
                error = error_reply(exc.code, str(exc), exc.status, exc.param)
                await self._send(reply_to, "gateway.error", request_id, **error)
            except SwarmUnavailable as exc:
                error = error_reply("swarm_unavailable", str(exc), 503)
                await self._send(reply_to, "gateway.error", request_id, **error)
            except Cancelled:
                pass  # the requester is gone: nobody to tell
            except Exception as exc:
                log.exception("generation %s failed", request_id)
                text = f"the swarm failed during generation: {type(exc).__name__}: {exc}"
                await self._send(reply_to, "gateway.error", request_id, **error_reply("swarm_error", text, 502))
            finally:
                self.running.pop(request_id, None)
                self.served += 1
        except (TimeoutError, ChannelFull):
            pass
        finally:
            self.slots.release()

    def _generate(self, request: GenerationRequest, cancelled: threading.Event) -> None:
        """Runs in a worker thread: the whole generation, its replies handed to the event loop."""
        emit = functools.partial(self._send_from_thread, request.reply_to, request.id, cancelled)
        try:
            serve_request(self.pool, request, emit, cancelled)
        finally:
            connections.close_all()  # this thread's database connection (the tracker lookup)

    def _send_from_thread(self, reply_to: str, request_id: str, cancelled: threading.Event, kind: str, **fields):
        if self.loop.is_closed():
            cancelled.set()
            raise Cancelled("the gateway stopped")
        future = asyncio.run_coroutine_threadsafe(self._send(reply_to, kind, request_id, **fields), self.loop)
        try:
            future.result(SEND_TIMEOUT_S)
        except Exception as exc:  # the requester's channel is full or gone: it stopped listening
            cancelled.set()
            raise Cancelled(str(exc)) from None

    async def _send(self, reply_to: str, kind: str, request_id: str, **fields) -> None:
        await self.layer.send(reply_to, {"type": kind, "id": request_id, **fields})


_embedded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ensure_embedded_gateway() -> None:
    """Start a gateway in this event loop if ``CHAT_GATEWAY_EMBEDDED`` and none runs here yet.

    The embedded demo's channel layer lives in process memory, so its gateway must share the
    daphne process (and loop) with the consumers that talk to it.
    """
    if not settings.CHAT_GATEWAY_EMBEDDED:
        return
    loop = asyncio.get_running_loop()
    task = _embedded.get(loop)
    if task is None or task.done():
        _embedded[loop] = loop.create_task(Gateway(shared_pool()).run())
