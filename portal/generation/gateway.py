"""The gateway: takes generation requests off the channel layer and streams the answers back.

Run it as its own process (``manage.py run_gateway``: one or more per machine, sharing the work
over Redis) or, in the embedded demo (in-memory channel layer), inside the daphne process
(:func:`ensure_embedded_gateway`). Either way the same :class:`Gateway` runs: an asyncio loop that
reads requests and cancels, and a thread per running generation (the swarm client is synchronous)
that runs :func:`portal.generation.streaming.serve_request`. Message formats: :mod:`portal.generation.protocol`.

The gateway, not the requester, settles each request's reservation (:mod:`portal.generation.reservations`):
the nodes are paid for every token it generates, so every token is charged, however the generation ends.
It outlives its channel layer's hiccups: a failed receive is logged and retried with a backoff, and the
control and heartbeat loops are restarted when they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connections

from portal import metrics
from portal.generation import reservations
from portal.generation.decoding import Usage
from portal.generation.outbox import Outbox
from portal.generation.pool import ModelPool, SwarmUnavailable, shared_pool
from portal.generation.protocol import CONTROL_GROUP, BadRequest, GenerationRequest
from portal.generation.streaming import Cancelled, cancelled_before_start, done_reply, error_reply, serve_request

log = logging.getLogger("portal.generation.gateway")

EARLY_CANCEL_TTL_S = 300.0  # remember cancels of requests not received yet this long
SEND_TIMEOUT_S = 10.0
RETRY_S = (0.1, 5.0)  # backoff after a channel-layer error: first wait, longest wait


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
        self.reply_to: dict[str, str] = {}  # running request id -> its requester's channel (heartbeats)
        self.early_cancels: dict[str, float] = {}
        self.served = 0
        self.restarts: dict[str, int] = {}  # helper loop name -> times it failed and was restarted

    async def run(self) -> None:
        """Serve until cancelled; then stop every running generation (their sessions close)."""
        self.layer = get_channel_layer()
        self.loop = asyncio.get_running_loop()
        self.slots = asyncio.Semaphore(self.concurrency)
        self.executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="gateway")
        self.control = await self.layer.new_channel("gateway-control.")
        tasks: set[asyncio.Task] = set()
        helpers = [
            asyncio.create_task(self._supervise("control", self._serve_control)),
            asyncio.create_task(self._supervise("heartbeat", self._heartbeat)),
        ]
        log.info("gateway reading %s (up to %d generations at once)", self.channel, self.concurrency)
        try:
            failures = 0
            while True:
                await self.slots.acquire()
                try:
                    message = await self.layer.receive(self.channel)
                except Exception:  # Redis restarting, a network blip: the gateway must outlive it
                    self.slots.release()
                    failures += 1
                    log.exception("reading %s failed (%d in a row); retrying", self.channel, failures)
                    await asyncio.sleep(_backoff(failures))
                    continue
                except BaseException:
                    self.slots.release()
                    raise
                failures = 0
                task = asyncio.create_task(self._handle(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for helper in helpers:
                helper.cancel()
            for event in self.running.values():
                event.set()
            for task in list(tasks):
                task.cancel()
            self.executor.shutdown(wait=False, cancel_futures=True)
            try:
                await asyncio.shield(self.layer.group_discard(CONTROL_GROUP, self.control))
            except Exception:  # the loop is going away; the group entry expires by itself
                pass

    async def _supervise(self, name: str, loop) -> None:
        """Run ``loop()`` for the gateway's lifetime: restart it (logged, with a backoff) whenever it fails."""
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await loop()
                raise RuntimeError(f"the {name} loop returned")
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = 1 if time.monotonic() - started > RETRY_S[1] else failures + 1
                self.restarts[name] = self.restarts.get(name, 0) + 1
                log.exception("the gateway's %s loop failed; restarting it", name)
                await asyncio.sleep(_backoff(failures))

    async def _serve_control(self) -> None:
        # (Re)joining on every start: a channel layer that lost its groups (Redis restarted) hears cancels again.
        await self.layer.group_add(CONTROL_GROUP, self.control)
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

    async def _heartbeat(self) -> None:
        """Tell each running request's requester that its gateway lives (they give up after a silence)."""
        while True:
            await asyncio.sleep(settings.CHAT_GATEWAY_HEARTBEAT)
            for request_id, reply_to in list(self.reply_to.items()):
                try:
                    await asyncio.wait_for(self._send(reply_to, "gateway.alive", request_id), SEND_TIMEOUT_S)
                except (TimeoutError, ChannelFull):
                    pass  # a requester that stopped reading: its generation is cancelled by the token send

    async def _handle(self, message: dict) -> None:
        reply_to = message.get("reply_to")
        request_id = message.get("id")
        try:
            if not isinstance(reply_to, str) or not reply_to or not isinstance(request_id, str):
                log.warning("dropped a request without reply_to/id: %r", {k: message.get(k) for k in ("type", "id")})
                return
            if self.early_cancels.pop(request_id, None) is not None:
                await self._release(message.get("reservation"))
                await self._send(reply_to, "gateway.done", request_id, **cancelled_before_start())
                metrics.generation_finished("cancelled")
                return
            cancelled = self.running.setdefault(request_id, threading.Event())
            self.reply_to[request_id] = reply_to
            outcome = "done"  # for the metrics (portal/metrics.py)
            try:
                request = GenerationRequest.from_message(message)
                await self.loop.run_in_executor(self.executor, self._generate, request, cancelled)
            except BadRequest as exc:
                outcome = "cancelled" if exc.code == "cancelled" else "bad_request"
                error = error_reply(exc.code, str(exc), exc.status, exc.param)
                await self._send(reply_to, "gateway.error", request_id, **error)
            except SwarmUnavailable as exc:
                outcome = "swarm_unavailable"
                error = error_reply("swarm_unavailable", str(exc), 503)
                await self._send(reply_to, "gateway.error", request_id, **error)
            except Cancelled:
                outcome = "cancelled"  # the requester is gone: nobody to tell
            except Exception as exc:
                outcome = "swarm_error"
                log.exception("generation %s failed", request_id, extra={"request_id": request_id})
                text = f"the swarm failed during generation: {type(exc).__name__}: {exc}"
                await self._send(reply_to, "gateway.error", request_id, **error_reply("swarm_error", text, 502))
            finally:
                metrics.generation_finished(outcome)
                self.running.pop(request_id, None)
                self.reply_to.pop(request_id, None)
                self.served += 1
        except (TimeoutError, ChannelFull):
            pass
        except Exception:  # a channel-layer failure while replying: this request is lost, the gateway is not
            log.exception("replying to %s failed", request_id)
        finally:
            self.slots.release()

    async def _release(self, reference) -> None:
        if isinstance(reference, str) and reference:
            await sync_to_async(reservations.settle, thread_sensitive=False)(reference, 0)

    def _generate(self, request: GenerationRequest, cancelled: threading.Event) -> None:
        """Runs in a worker thread: the whole generation, its replies handed to the event loop.

        The reservation is settled with every token used, before ``gateway.done`` goes out, and also when
        the generation ends any other way (stopped, requester gone, swarm failure).
        """
        outbox = Outbox(self.loop, functools.partial(self._send_to, request.reply_to, request.id), cancelled,
                        SEND_TIMEOUT_S)  # fmt: skip
        emit = outbox.emit  # tokens do not wait for the loop: the swarm client keeps decoding
        usage = Usage()
        settled = not request.reservation
        try:
            if not settled and not reservations.claim(request.reservation):
                settled = True
                raise BadRequest("the request was withdrawn before a gateway took it", None, "cancelled", 409)
            outcome = serve_request(self.pool, request, emit, cancelled, usage)
            metrics.GATEWAY_TOKENS.inc(outcome.completion_tokens)
            reservations.settle(request.reservation, usage.total)
            settled = True
            emit("gateway.done", **done_reply(outcome))
        finally:
            try:
                if not settled:  # stopped, the requester gone, the swarm failed: charge what was generated
                    reservations.settle(request.reservation, usage.total)
            except Exception:  # the database is down: the reservation expires (logged, never silent)
                log.exception("settling %s (%d tokens) failed", request.reservation, usage.total)
            with contextlib.suppress(Cancelled):  # queued tokens go out before _handle's error reply, if any
                outbox.drain()
            connections.close_all()  # this thread's database connection (the tracker lookup, the ledger)

    async def _send_to(self, reply_to: str, request_id: str, kind: str, **fields) -> None:
        await self._send(reply_to, kind, request_id, **fields)

    async def _send(self, reply_to: str, kind: str, request_id: str, **fields) -> None:
        await self.layer.send(reply_to, {"type": kind, "id": request_id, **fields})


def _backoff(failures: int) -> float:
    return min(RETRY_S[1], RETRY_S[0] * 2 ** max(0, failures - 1))


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
