"""Announcing a node to the DHT (``--dht``), beside or instead of (``--dht-only``) the portal's tracker.

:func:`start_announcers` replaces the portal announcer's start in the node: it starts the DHT announcer when
``--dht`` names bootstrap peers, and the portal announcer unless ``--dht-only``. Where the DHT engine cannot be
loaded (Windows: hivemind has no wheel there; or it is not installed) the node says so in one warning and announces
to the portal tracker instead, if it has one.

The DHT announcer joins the DHT as a full peer (other peers store records on it too), stores its signed record
(:mod:`swarmnode.dht.records`) under each block of its span, re-announces every third of the record's lifetime (a
record outlives two missed re-announcements), and on a graceful stop leaves a signed ``offline`` tombstone that
outlives the last record, so lookups drop it at once rather than when it expires.
"""

from __future__ import annotations

import asyncio
import logging
import time

from swarmnode.discovery import PeerInfo
from swarmnode.server.announce import AnnouncerTask, start_announcer

log = logging.getLogger("swarmnode.dht")

FALLBACK_LINE = "the DHT is unavailable on this machine (%s): falling back to the portal tracker%s"


def _import_engine() -> str | None:
    """None if the DHT engine loads, else why not."""
    try:
        import swarmnode.dht.engine  # noqa: F401  (hivemind: seconds of imports)
    except Exception as exc:  # not installed, no build for this platform, or a module it needs missing or broken
        return f"{type(exc).__name__}: {exc}"
    return None


class DHTAnnouncer:
    """Keeps ``node``'s signed record in the DHT joined through ``initial_peers``.

    Args:
        node: a serving :class:`~swarmnode.server.node.Node`.
        initial_peers: bootstrap multiaddrs (``--dht``).
        ttl: seconds each record lives (``--dht-ttl``); re-announced every ``ttl / 3``.
    """

    def __init__(self, node, initial_peers: list[str], ttl: float) -> None:
        self.node = node
        self.initial_peers = list(initial_peers)
        self.ttl = ttl
        self.dht = None
        self.announced: PeerInfo | None = None  # the span last announced (a move announces the new one)
        self.last_expiry = 0.0

    def record_peer(self) -> PeerInfo:
        """This node as its record describes it (its address: a relay's while relayed)."""
        node = self.node
        peer = PeerInfo.from_reply(getattr(node, "address", node.url), node.info())
        relay = getattr(node, "relay_link", None) is not None
        hub = getattr(node, "relay_hub", None)
        capacity = hub.limits.capacity if hub is not None and not relay else 0
        return PeerInfo(**{**peer.__dict__, "relay": relay, "relay_capacity": capacity})

    async def _join(self) -> None:
        from swarmnode.dht import open_dht

        cfg = self.node.config
        wait = 1.0
        while self.dht is None:
            try:
                self.dht = await asyncio.to_thread(
                    open_dht,
                    self.initial_peers,
                    host=cfg.host,
                    port=cfg.dht_port,
                    announce_host=cfg.public_host,
                )
            except OSError as exc:  # no bootstrap peer answers (yet): keep serving, try again
                log.warning("%s; retrying in %.0f s", exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 60.0)
        addrs = await asyncio.to_thread(self.dht.visible_addrs)
        log.info("joined the DHT at %s", ",".join(addrs), extra={"dht_addrs": addrs})

    async def announce_once(self, state: str | None = None) -> int:
        """Store the current record (or, with ``state="offline"``, the tombstone); return the keys that took it."""
        from swarmnode.dht import signed

        if state == "offline":  # outlives the last record, so the DHT keeps it rather than the record
            peer, ttl = self.announced, max(0.0, self.last_expiry - time.time()) + 1.0
        else:
            peer, ttl = self.record_peer(), self.ttl
            moved = (
                self.announced is not None
                and self.announced.length
                and ((self.announced.start_block, self.announced.end_block) != (peer.start_block, peer.end_block))
            )
            if moved:  # rebalanced: the old span's keys drop this node
                await self.announce_once("offline")
        record, value = signed(peer, self.node.identity, ttl, state)
        stored = await asyncio.to_thread(self.dht.announce, (record, value))
        if state is None:
            self.announced, self.last_expiry = peer, record["expires"]
        span = f"{peer.start_block}:{peer.end_block}"
        log.info("announced %s %s to the DHT (%d keys took it)", span, state or "online", stored)
        return stored

    async def run(self) -> None:
        """Join, then announce every ``ttl / 3`` seconds until cancelled; failures are logged and retried."""
        await self._join()
        while True:
            if getattr(self.node, "address", self.node.url):
                try:
                    await self.announce_once()
                except Exception as exc:  # an unreachable DHT: the next round tries again
                    log.warning("announcing to the DHT failed: %r", exc)
            await asyncio.sleep(self.ttl / 3)

    async def leave(self) -> None:
        """Leave an ``offline`` tombstone for the announced span, then stop the DHT peer."""
        if self.dht is None:
            return
        try:
            if self.announced is not None:
                await asyncio.wait_for(self.announce_once("offline"), 4.0)  # within the node's shutdown grace
        except Exception as exc:
            log.info("could not leave a tombstone in the DHT: %r", exc)
        await asyncio.to_thread(self.dht.close)


class Announcers:
    """The node's announcers (DHT, portal), started and closed together; ``close`` says the goodbyes."""

    def __init__(self, node) -> None:
        self.node = node
        self.portal: AnnouncerTask | None = None
        self.dht: DHTAnnouncer | None = None
        self.task = asyncio.create_task(self._start(), name="announcers")

    async def _start(self) -> None:
        cfg = self.node.config
        if not cfg.dht:
            self.portal = start_announcer(self.node)
            return
        why = await asyncio.to_thread(_import_engine)
        if why is not None:
            where = f" at {cfg.portal}" if cfg.portal else " (no --portal given: this node is announced nowhere)"
            log.warning(FALLBACK_LINE, why, where)
            self.portal = start_announcer(self.node)
            return
        if not cfg.dht_only:
            self.portal = start_announcer(self.node)
        self.dht = DHTAnnouncer(self.node, list(cfg.dht), cfg.dht_ttl)
        await self.dht.run()

    async def close(self) -> None:
        """Stop announcing; leave the DHT a tombstone and the portal a goodbye."""
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass
        goodbyes = []
        if self.dht is not None:
            goodbyes.append(self.dht.leave())
        if self.portal is not None:
            goodbyes.append(self.portal.close())
        await asyncio.gather(*goodbyes, return_exceptions=True)


def start_announcers(node) -> Announcers | None:
    """Start announcing ``node`` to the DHT (``--dht``) and/or the portal (``--portal``); None if to neither."""
    cfg = node.config
    if not cfg.dht and not cfg.portal:
        return None
    return Announcers(node)


def dht_view(model: str, num_blocks: int, initial_peers: list[str]) -> list[PeerInfo]:
    """The nodes the DHT lists for ``model`` (for ``--blocks auto``); [] when the DHT cannot be read (logged)."""
    why = _import_engine()
    if why is not None:
        log.warning(FALLBACK_LINE, why, "")
        return []
    from swarmnode.dht import open_dht

    try:
        dht = open_dht(initial_peers, client_mode=True)
    except OSError as exc:
        log.warning("--blocks auto: %s; choosing without the DHT's nodes", exc)
        return []
    try:
        return dht.lookup(model, range(num_blocks))
    finally:
        dht.close()
