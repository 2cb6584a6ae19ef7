"""Announcing a node to a portal's tracker: register once, then heartbeat until the node stops.

The announcer is a background asyncio task of the node. The portal being down, slow or
refusing never stops the node from serving: every failure is logged and retried with
exponential backoff (``tenacity``). Requests go through ``httpx`` in a worker thread, bounded in
time and size (``swarmnode/discovery/portal_http.py``).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from swarmnode.discovery import PeerInfo
from swarmnode.discovery.portal_http import PortalHTTPError, call_json
from swarmnode.server.blocking import run_blocking

log = logging.getLogger("swarmnode.announce")

REGISTER_PATH = "/api/v1/nodes/register/"
KEY_CHALLENGE_PATH = "/api/v1/nodes/key-challenge/"
MAX_INTERVAL = 300.0  # the longest heartbeat interval we accept from a portal (a garbage one must not silence us)


# The portal answered with an HTTP error status: ``status`` (401 bad token, 404/410 node unknown or offline,
# 409 conflict, ...), ``detail``, ``retry_after`` (seconds it asked us to wait, 503 when overloaded).
PortalRejected = PortalHTTPError


def post_json(url: str, token: str, body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    """POST ``body`` as JSON with the node token; return the JSON object the portal answered.

    Raises:
        PortalRejected: an HTTP error status.
        OSError: the portal could not be reached, or broke the HTTP exchange off (a reset connection, a
            malformed status line or a truncated body are all ``ConnectionError`` here).
        ValueError: the reply is not a JSON object, or larger than the cap.
    """
    reply = call_json("POST", url, token=token, body=body or {}, timeout=timeout)
    if not isinstance(reply, dict):
        raise ValueError(f"the portal answered {type(reply).__name__}, not a JSON object")
    return reply


def prove_key(portal: str, token: str, identity, timeout: float = 10.0) -> dict[str, str]:
    """Fetch a key challenge from ``portal`` and sign it: the ``key_proof`` a registration with
    ``identity.public_key`` must carry (the tracker pays a key's receipts only to its proven holder).

    Args:
        portal: the portal's base URL.
        token: the node token that will register.
        identity: the node's :class:`~swarmnode.trust.identity.NodeIdentity`.
        timeout: seconds for the request.

    Raises:
        PortalRejected, OSError, ValueError: as :func:`post_json` (ValueError also for a malformed challenge).
    """
    nonce = post_json(portal.rstrip("/") + KEY_CHALLENGE_PATH, token, None, timeout).get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise ValueError("the portal's key challenge holds no nonce")
    return {"nonce": nonce, "signature": identity.prove_key(nonce)}


def measure_throughput(node, repeats: int = 5) -> float:
    """Single-sequence decode speed through the node's span, in tokens/s (0.0 if it cannot be measured)."""
    try:
        import torch

        from swarmnode.models.wire import tensor_to_wire

        # Activations travel as float32 whatever the node computes in (int8 and fp16 backends convert).
        x = tensor_to_wire(torch.zeros(1, 1, node.hidden_size), "float32")  # (B=1, T=1, H)
        node.backend.forward(x)  # warm-up: the first call pays for lazy initialisation
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            node.backend.forward(x)
            times.append(time.perf_counter() - started)
        return round(1.0 / max(statistics.median(times), 1e-6), 2)
    except Exception as exc:  # an estimate only: never fail the node over it
        log.warning("could not measure throughput: %s", exc)
        return 0.0


class Announcer:
    """Registers ``node`` with the tracker at ``portal`` and keeps it alive with heartbeats.

    Args:
        node: a serving :class:`~swarmnode.server.node.Node` (its ``url`` is set).
        portal: the portal's base URL, e.g. ``http://127.0.0.1:8000``.
        token: the node token (``lsn_...``) from the portal's "Contribute a GPU" page.
        timeout: seconds per HTTP request.
        max_backoff: the longest wait between retries.
    """

    def __init__(self, node, portal: str, token: str, timeout: float = 10.0, max_backoff: float = 60.0) -> None:
        self.node = node
        self.portal = portal.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.node_id: int | None = None
        self.interval = 10.0  # replaced by the portal's heartbeat_interval
        self.throughput = 0.0
        self.state = "unregistered"
        self.registered_url = ""

    def registration(self) -> dict[str, Any]:
        """The registration payload, from the node's own :meth:`Node.info`."""
        record = PeerInfo.from_reply(getattr(self.node, "address", self.node.url), self.node.info())
        return {
            **record.announcement(),
            # A relay address while relayed (spec §9), whatever the URL looks like.
            "relay": getattr(self.node, "relay_link", None) is not None,
            # A directly reachable node started with --relay-capacity also relays for nodes behind NAT (§9).
            "relay_capacity": self._relay_capacity(),
            "throughput": self.throughput,
        }

    def _relay_capacity(self) -> int:
        hub = getattr(self.node, "relay_hub", None)
        if hub is None or getattr(self.node, "relay_link", None) is not None:
            return 0
        return hub.limits.capacity

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat payload."""
        info = self.node.info()
        return {
            "cache_tokens_left": info.cache_tokens_left,
            "open_sessions": info.open_sessions,
            "throughput": self.throughput,
        }

    async def _post(self, path: str, body: dict[str, Any] | None, timeout: float | None = None) -> dict[str, Any]:
        url = self.portal + path
        return await run_blocking(post_json, url, self.token, body, timeout or self.timeout)

    async def announce_once(self) -> None:
        """Register if needed, then send one heartbeat.

        Raises:
            PortalRejected, OSError, ValueError: as :func:`post_json`.
        """
        address = getattr(self.node, "address", self.node.url)
        if self.node_id is not None and address != self.registered_url:  # moved to another relay (spec §9.5)
            await self.leave()
            self.node_id = None
        if not address:
            return  # between relays: nowhere to be reached, so nothing to announce
        if self.node_id is None:
            self.registered_url = address
            body = self.registration()
            if body.get("public_key"):
                body["key_proof"] = await self._key_proof(body["public_key"])
            reply = await self._post(REGISTER_PATH, body)
            self.node_id = int(reply["id"])
            interval = float(reply.get("heartbeat_interval", self.interval))
            self.interval = min(max(0.2, interval), MAX_INTERVAL) if interval == interval else self.interval  # NaN
            log.info("registered with %s as node %d", self.portal, self.node_id)
        try:
            reply = await self._post(f"/api/v1/nodes/{self.node_id}/heartbeat/", self.heartbeat())
        except PortalRejected as exc:
            if exc.status in (404, 410):  # expired or forgotten: register again next time
                self.node_id = None
            raise
        self.state = str(reply.get("state", "online"))

    async def _key_proof(self, public_key: str) -> dict[str, str]:
        """Sign a fresh portal challenge with the node's identity key: the tracker pays only the key's holder."""
        identity = getattr(self.node, "identity", None)
        if identity is None or identity.public_key != public_key:
            raise ValueError("the node cannot prove its announced key: it holds no identity for it")
        return await run_blocking(prove_key, self.portal, self.token, identity, self.timeout)

    async def run(self) -> None:
        """Announce forever; failures are logged and retried with exponential backoff.

        Nothing the portal answers ends the task: refusals, resets, garbage and unexpected errors are
        all logged and retried, so a node keeps announcing through any portal outage.
        """
        try:
            measured = float(getattr(self.node.info(), "throughput", 0.0) or 0.0)  # the node's own measurement
        except (TypeError, ValueError):
            measured = 0.0
        self.throughput = measured if measured > 0 else await asyncio.to_thread(measure_throughput, self.node)
        # Every failure (a bug or a surprise included) is retried; only cancelling the task ends it.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception), wait=self._backoff, before_sleep=self._failed
        )
        while True:
            await retrying(self.announce_once)  # each outage starts again from the shortest wait
            await self._sleep_unless_moved(self.interval)

    def _backoff(self, state: RetryCallState) -> float:
        """Seconds before the next try: doubling up to ``max_backoff``, at least what the portal asked; none
        for an outage's first 404/410 (expired or forgotten: re-register at once)."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, PortalRejected):
            if exc.status in (404, 410) and state.attempt_number == 1:
                return 0.0
            return max(wait_exponential(max=self.max_backoff)(state), min(exc.retry_after, self.max_backoff))
        return wait_exponential(max=self.max_backoff)(state)

    def _failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.upcoming_sleep
        if isinstance(exc, PortalRejected):
            level = logging.WARNING if exc.status in (404, 410) else logging.ERROR
            log.log(level, "portal %s refused the announcement: %s; retrying in %.0fs", self.portal, exc, wait)
        elif isinstance(exc, (OSError, ValueError, KeyError, TypeError)):
            log.warning("portal %s unreachable (%s); retrying in %.0fs", self.portal, exc, wait)
        else:
            log.error(
                "announcing to %s failed unexpectedly (%r); retrying in %.0fs", self.portal, exc, wait, exc_info=exc
            )

    async def _sleep_unless_moved(self, seconds: float) -> None:
        """Sleep until the next heartbeat, or less if the node's address changed (it moved to another relay)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
            if getattr(self.node, "address", self.node.url) != self.registered_url:
                return

    async def leave(self) -> None:
        """Tell the portal the node is going away (best effort, short timeout)."""
        if self.node_id is None:
            return
        try:
            await self._post(f"/api/v1/nodes/{self.node_id}/leave/", None, timeout=2.0)
        except Exception as exc:
            log.info("could not say goodbye to the portal: %s", exc)


class AnnouncerTask:
    """A running :class:`Announcer`; :meth:`close` stops it and sends the goodbye."""

    def __init__(self, announcer: Announcer) -> None:
        self.announcer = announcer
        self.task = asyncio.create_task(announcer.run(), name="announce")

    async def close(self) -> None:
        """Stop heartbeating and leave the swarm."""
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass
        await self.announcer.leave()


def start_announcer(node) -> AnnouncerTask | None:
    """Start announcing ``node`` if its config names a portal and a token; otherwise ``None``."""
    portal = getattr(node.config, "portal", None)
    token = getattr(node.config, "token", None)
    if not portal:
        return None
    if not token:
        log.error("--portal given without --token: not announcing (create a token on the portal)")
        return None
    return AnnouncerTask(Announcer(node, portal, token))
