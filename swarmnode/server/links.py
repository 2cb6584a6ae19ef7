"""Link quality between this node and its neighbours (and the tracker): RTT and bandwidth probes.

The RTT is the best of a few Info round trips on one open connection. The bandwidth probe sends
one Info frame padded with an extra field, which nodes ignore (spec §2.4: unknown fields are
ignored), and subtracts the RTT from the time the reply takes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from dataclasses import dataclass

import msgpack
from websockets.asyncio.client import connect

from swarmnode.protocol import PROTOCOL_VERSION, Info, InfoReply, Limits, decode, encode
from swarmnode.protocol.framing import message_bound
from swarmnode.server.blocking import run_blocking

log = logging.getLogger("swarmnode.links")


@dataclass(frozen=True)
class LinkQuality:
    """One measured link (0.0: could not be measured)."""

    rtt_s: float = 0.0
    bandwidth_bytes_per_s: float = 0.0


async def probe_node(url: str, count: int = 3, payload_bytes: int = 256 * 1024, timeout: float = 5.0) -> LinkQuality:
    """RTT and upload bandwidth to the node at ``url``.

    Raises:
        OSError, TimeoutError, websockets errors: the node cannot be reached.
    """
    async with asyncio.timeout(timeout):
        # A node answers with info_reply frames: nothing bigger than a default frame is read (§6.3).
        max_size = message_bound(Limits().max_frame_bytes)
        async with connect(url, max_size=max_size, compression=None, ping_interval=None) as ws:
            best = float("inf")
            for i in range(max(1, count)):
                started = time.perf_counter()
                await ws.send(encode(Info(id=i + 1)))
                if not isinstance(decode(await ws.recv()), InfoReply):
                    raise OSError(f"{url} did not answer Info")
                best = min(best, time.perf_counter() - started)
            padded = msgpack.packb(
                {"v": PROTOCOL_VERSION, "type": "info", "id": 99, "pad": bytes(payload_bytes)}, use_bin_type=True
            )
            started = time.perf_counter()
            await ws.send(padded)
            await ws.recv()
            transfer = max(time.perf_counter() - started - best, 1e-6)
            return LinkQuality(best, payload_bytes / transfer)


def probe_tracker(portal: str, count: int = 3, timeout: float = 5.0) -> LinkQuality:
    """RTT to the portal's tracker (best of ``count`` small HTTP requests; blocking)."""
    best = float("inf")
    for _ in range(max(1, count)):
        started = time.perf_counter()
        with urllib.request.urlopen(f"{portal.rstrip('/')}/api/v1/models/", timeout=timeout) as reply:
            reply.read()
        best = min(best, time.perf_counter() - started)
    return LinkQuality(best, 0.0)


def neighbours(view: list, start: int, end: int, limit: int = 4) -> list[str]:
    """URLs of nodes a chain would hand activations to or from: spans ending at ``start`` or starting at ``end``."""
    near = [p.url for p in view if p.end_block == start or p.start_block == end]
    return near[:limit]


async def probe_links(view: list, start: int, end: int, portal: str | None) -> dict[str, LinkQuality]:
    """Probe the neighbours in ``view`` and the tracker; failures are logged and left out."""
    out: dict[str, LinkQuality] = {}
    for url in neighbours(view, start, end):
        try:
            out[url] = await probe_node(url)
        except Exception as exc:
            log.info("link probe to %s failed: %s", url, exc)
    if portal:
        try:
            out[portal] = await run_blocking(probe_tracker, portal)
        except Exception as exc:
            log.info("tracker probe failed: %s", exc)
    return out
