"""Which relays a node knows and attaches to (spec §9.2, §9.5), and which of them may see its node token.

A relay may be run by anyone, so a node trusts the claims of none but its portal: the token goes only to the
portal's own relay (:func:`may_send_token`), and a relay's claimed load only sorts it into a coarse band, the
round-trip the node measures deciding within it (:class:`RelayLoad`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from websockets.asyncio.client import connect

from swarmnode.protocol import relay as envelope

log = logging.getLogger("swarmnode.relay_link")


def may_send_token(relay: str, token_relays: Collection[str]) -> bool:
    """Whether the node token may go to ``relay``: it is the portal's own relay, over TLS or on loopback."""
    if relay.rstrip("/") not in token_relays:
        return False
    if relay.startswith("wss://"):
        return True
    try:
        host = urlsplit(relay).hostname or ""
    except ValueError:
        return False
    return host == "localhost" or _is_loopback(host)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MAX_CLAIMED_CAPACITY = 4096  # a relay claiming more is treated as this big: a huge capacity cannot buy a low load
LOAD_BANDS = (0.5, 0.9)  # announced loads are only compared by band: below half full, nearly full, (almost) full
RTT_GRAIN_S = 0.005  # round-trips closer than this count as equal (the given order decides)


@dataclass(frozen=True)
class RelayLoad:
    """What a relay said about its load (``relay_status``, §9.5) and how long it took us to hear it."""

    load: float  # attached nodes / capacity as announced; inf if it did not answer or answered nonsense
    rtt_s: float  # measured round-trip of the status request (inf if none)

    def rank(self) -> tuple[int, float]:
        """Sort key: the band of the announced load first, then the measured round-trip.

        A relay can claim any load, so its claim only sorts it into a coarse band: claiming an empty relay
        puts it level with every relay under half full, not ahead of them. Within a band, what we measured
        decides; full or silent relays come last.
        """
        band = len(LOAD_BANDS) + 1 if self.load >= 1.0 else sum(self.load >= b for b in LOAD_BANDS)
        return band, round(self.rtt_s / RTT_GRAIN_S) if self.rtt_s != float("inf") else float("inf")


async def measure_relay(relay: str, timeout: float = 3.0) -> RelayLoad:
    """Ask ``relay`` for its load (``relay_status``, §9.5), timing the round-trip."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            async with connect(relay, max_size=1 << 16, compression=None, ping_interval=None) as ws:
                sent = loop.time()
                await ws.send(envelope.pack("relay_status", id=1))
                load = envelope.unpack(await ws.recv(), 1 << 16, {"relay_load"})
                rtt = loop.time() - sent
    except Exception as exc:
        log.info("relay %s did not say its load: %s", relay, exc)
        return RelayLoad(float("inf"), float("inf"))
    nodes, capacity = load["nodes"], min(load["capacity"], MAX_CLAIMED_CAPACITY)
    if capacity <= 0 or not 0 <= nodes <= load["capacity"]:
        return RelayLoad(float("inf"), rtt)  # nonsense (negative, more nodes than room): as good as full
    return RelayLoad(nodes / capacity, rtt)


async def relay_load(relay: str, timeout: float = 3.0) -> float:
    """The load of ``relay`` as attached nodes / capacity (``relay_status``, §9.5); ``inf`` if it does not answer."""
    return (await measure_relay(relay, timeout)).load


async def order_by_load(relays: list[str]) -> list[str]:
    """``relays`` best first: by band of announced load, then by measured round-trip (full or silent ones last).

    Ties keep the given order. See :meth:`RelayLoad.rank` for why a relay's own claim counts only coarsely.
    """
    loads = await asyncio.gather(*(measure_relay(r) for r in relays))
    ranked = sorted(range(len(relays)), key=lambda i: (*loads[i].rank(), i))
    return [relays[i] for i in ranked]


def portal_relay(portal: str) -> str:
    """The portal's relay base URL: ``ws(s)://PORTAL/ws/relay``."""
    base = portal.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/ws/relay"
    return "ws://" + base.split("://", 1)[-1] + "/ws/relay"


def relay_directory(portal: str, timeout: float = 5.0) -> list[dict]:
    """The portal's relay list (``GET /api/v1/relays/``: ``[{url, kind, ...}]``, ws(s) URLs only); [] on failure."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{portal.rstrip('/')}/api/v1/relays/", timeout=timeout) as reply:
            body = json.loads(reply.read())
        return [
            {"url": str(r["url"]).rstrip("/"), "kind": str(r.get("kind", ""))}
            for r in body["relays"]
            if str(r.get("url", "")).startswith(("ws://", "wss://"))
        ]
    except Exception as exc:
        log.info("cannot list the portal's relays: %s", exc)
        return []


def tracker_relays(portal: str, timeout: float = 5.0) -> list[str]:
    """Relay base URLs the portal lists (its own and nodes started with ``--relay-capacity``); [] on failure."""
    return [r["url"] for r in relay_directory(portal, timeout)]


def relay_candidates(config) -> list[str]:
    """Relay base URLs from ``--relays`` and, with ``--portal``, the portal's own relay (``/ws/relay``)."""
    out = [r.rstrip("/") for r in getattr(config, "relays", ()) if r]
    portal = getattr(config, "portal", None)
    if portal:
        out.append(portal_relay(portal))
    return out
