"""Which next hops a node dials for a pushed step (spec §7.5), so that push is no open proxy.

A client names the next hops of a pushed step, and the node dials them on its own behalf. Left
open, that lets any stranger make a node connect wherever they like (its own network, the
operator's admin ports, a victim's server) and send it large frames. So a node dials only:

* itself, or a node of its swarm view (the tracker's and its ``--peers``' list of nodes serving
  the same model), re-read at most every ``push_view_refresh`` seconds when a route names a node it
  does not know; the hop's announced public key then encrypts the link (§7.6), so only the holder
  of that key can read it, whatever sits in between;
* or, on a node that has neither a tracker nor peers and serves on its own loopback or private
  network (``push_unlisted``: ``auto``), a hop whose public key the route names (``URL#key``): a
  client's local swarm; the link's handshake then proves the key before any step is sent;
* an address that is public, unless the operator allows private and loopback ones
  (``push_private``: ``auto`` allows them when the node itself serves on one, as on a LAN or in tests).

The host is resolved once here and the link dials the address that was checked, so a name that
resolves elsewhere a moment later cannot slip a private address past the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from swarmnode.discovery import addresses, swarm_view
from swarmnode.discovery.addresses import is_private_host as is_private_host  # the rule lives in discovery now
from swarmnode.protocol.relay import relay_key_id
from swarmnode.server.blocking import run_blocking
from swarmnode.trust.secure_channel import key_id

if TYPE_CHECKING:  # the node imports this module through push.py
    from swarmnode.server.node import Node

log = logging.getLogger("swarmnode.push")

PUSH_PRIVATE_MODES = addresses.PRIVATE_MODES


class RouteRefused(Exception):
    """A next hop this node will not dial; ``reason`` is safe to tell the client."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url[:200]}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class NextHop:
    """A checked next hop: where to dial and whose key must answer there."""

    url: str
    public_key: str  # the hop's announced identity (spec §1.4): the push link is sealed to it
    address: str  # the IP address that was checked, dialled instead of resolving the name again
    port: int


def allows_private(mode: str, own_host: str) -> bool:
    """Whether private next hops may be dialled under ``push_private`` ``mode`` by a node serving on ``own_host``.

    Raises:
        ValueError: an unknown mode.
    """
    try:
        return addresses.allows_private(mode, own_host)
    except ValueError:
        raise ValueError(f"push_private must be one of {PUSH_PRIVATE_MODES}, got {mode!r}") from None


def split_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``ws://`` or ``wss://`` URL.

    Raises:
        RouteRefused: not such a URL, or one with credentials in it.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RouteRefused(url, "not a valid URL") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise RouteRefused(url, "not a ws:// or wss:// URL")
    if parts.username or parts.password:
        raise RouteRefused(url, "credentials in a node URL")
    return parts.hostname, port or (443 if parts.scheme == "wss" else 80)


async def resolve_address(host: str, port: int, private_ok: bool) -> str:
    """The first address of ``host``, after checking every address it resolves to.

    Raises:
        RouteRefused: it does not resolve, or resolves to a private address and ``private_ok`` is false.
    """
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise RouteRefused(host, "the host name does not resolve") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise RouteRefused(host, "the host name does not resolve")
    if not private_ok:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global or ip.is_multicast:
                raise RouteRefused(host, "a private, loopback or reserved address (this node dials public ones only)")
    return addresses[0]


def _key_id_of(public_key: str) -> str | None:
    try:
        return key_id(public_key)
    except ValueError:  # a malformed announced key
        return None


class PushRoutes:
    """The next hops one node may dial (see the module docstring).

    Args:
        node: the serving node (its config, URL, identity and model name).
        view: ``view() -> [PeerInfo]``, blocking; default the tracker's and peers' nodes of the node's model.
    """

    def __init__(self, node: Node, view=None) -> None:
        self.node = node
        self._view = view or self._swarm_view
        self._known: dict[str, str] = {}  # url -> announced public key
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    def _swarm_view(self) -> list:
        cfg = self.node.config
        # The tracker's private URLs: as the operator says for next hops, else when the tracker itself is local.
        private_ok = {"allow": True, "refuse": False}.get(cfg.push_private)
        return swarm_view(self.node.model_name, cfg.portal, list(cfg.peers), self.node.url, private_ok=private_ok)

    @property
    def has_sources(self) -> bool:
        """Whether the node can learn of other nodes at all (a tracker or ``--peers``)."""
        return bool(self.node.config.portal or self.node.config.peers)

    @property
    def dials_unlisted(self) -> bool:
        """Whether next hops outside the swarm view may be dialled when the route names their key (§7.5)."""
        cfg = self.node.config
        if cfg.push_unlisted not in PUSH_PRIVATE_MODES:
            raise ValueError(f"push_unlisted must be one of {PUSH_PRIVATE_MODES}, got {cfg.push_unlisted!r}")
        own_network = allows_private(cfg.push_private, cfg.public_host or cfg.host)
        return cfg.push_unlisted == "allow" or (cfg.push_unlisted == "auto" and not self.has_sources and own_network)

    async def check(self, entry: str) -> NextHop:
        """The hop a route ``entry`` (``URL`` or ``URL#public_key``, spec §7.2) names, as it may be dialled.

        Raises:
            RouteRefused: not a node of this swarm, or an address this node does not dial.
        """
        url, _, named_key = entry.partition("#")
        host, port = split_url(url)
        public_key = await self._public_key(url, named_key)
        cfg = self.node.config
        private_ok = allows_private(cfg.push_private, cfg.public_host or cfg.host)
        try:
            address = await resolve_address(host, port, private_ok)
        except RouteRefused as exc:
            raise RouteRefused(url, exc.reason) from None
        return NextHop(url=url, public_key=public_key, address=address, port=port)

    async def _public_key(self, url: str, named_key: str) -> str:
        if url in (self.node.url, self.node.address):
            key = self.node.identity.public_key
        else:
            if url not in self._known and self.has_sources:
                await self._reread()
            key = self._known.get(url)
        if key is None:
            if not (named_key and self.dials_unlisted):
                raise RouteRefused(url, "not a node of this swarm (the tracker and this node's peers do not list it)")
            key = named_key  # a swarm without tracker or peers: the handshake proves the named key (§7.6)
        if not key:
            raise RouteRefused(url, "the node announces no public key, so a push link to it cannot be encrypted")
        if named_key and named_key != key:
            raise RouteRefused(url, "the route names other keys than this node's view of the swarm")
        wanted = relay_key_id(url)  # §10.5: a relay could answer our probe with keys of its own
        if wanted is not None and _key_id_of(key) != wanted:
            raise RouteRefused(url, "the node's keys do not match the key id in its relay address")
        return key

    async def _reread(self) -> None:
        """Read the swarm again, at most once per ``push_view_refresh`` seconds (strangers name unknown URLs)."""
        async with self._lock:
            if time.monotonic() - self._read_at < self.node.config.push_view_refresh:
                return
            self._read_at = time.monotonic()
            try:
                view = await run_blocking(self._view)
            except Exception as exc:  # the tracker is down: keep what we knew
                log.info("cannot read the swarm for push routes: %s", exc)
                return
            self._known = {p.url: p.public_key or "" for p in view}
