"""Where a relay (or any server) may dial on a peer's word (spec §9.3): the peer's own address, and a public one.

A peer that names a URL for us to dial could otherwise point us at a third party (a blind request from our
address, to scan or hit services that trust it) or at our own private network (the cloud metadata service,
an admin port on loopback). So a dial-back goes only to the address the peer is connected from, and never
to a private, loopback, link-local, multicast or otherwise non-global address unless the operator allows it
(a LAN swarm, tests on loopback).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

DEFAULT_PORTS = {"ws": 80, "wss": 443}


class DialRefused(ValueError):
    """We will not dial that URL for this peer (``code``: ``bad_url``, ``not_peer_address``, ``private_address``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:a.b.c.d is a.b.c.d (dual-stack sockets report it so)
    return addr


def is_public_address(ip: str) -> bool:
    """Whether ``ip`` is a globally routable unicast address (not private, loopback, link-local, multicast, ...)."""
    addr = _ip(ip)
    return addr is not None and addr.is_global and not addr.is_multicast


def serves_privately(host: str) -> bool:
    """Whether a server named ``host`` sits on a private network (loopback, LAN): a name or ``0.0.0.0`` is public."""
    if host.lower().rstrip(".") == "localhost":
        return True
    addr = _ip(host.strip("[]"))
    return addr is not None and not addr.is_unspecified and not is_public_address(str(addr))


def check_private(ip: str, allow_private: bool) -> None:
    """Refuse a non-public ``ip`` unless ``allow_private``.

    Raises:
        DialRefused: ``private_address``.
    """
    if not allow_private and not is_public_address(ip):
        raise DialRefused("private_address", f"{ip} is not a public address (the operator allows none)")


async def _resolve(host: str, port: int) -> set[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DialRefused("bad_url", f"cannot resolve {host[:100]!r}: {exc}") from exc
    return {str(_ip(str(info[4][0]))) for info in infos}


async def dial_target(url: str, peer_ip: str, allow_private: bool = False) -> tuple[str, int]:
    """The ``(ip, port)`` to dial for ``url``, a URL that the peer connected from ``peer_ip`` asks us to dial.

    The URL's host must be ``peer_ip`` itself (or a name resolving to it: we then dial ``peer_ip``, so a second
    lookup cannot send us elsewhere), and ``peer_ip`` must be public unless ``allow_private``. Nothing is dialled.

    Raises:
        DialRefused: ``bad_url`` (not ``ws(s)://host[:port]``), ``not_peer_address``, ``private_address``.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise DialRefused("bad_url", f"malformed URL: {exc}") from exc
    if parts.scheme not in DEFAULT_PORTS or not host:
        raise DialRefused("bad_url", "the URL must be ws://HOST[:PORT]/... or wss://...")
    port = port or DEFAULT_PORTS[parts.scheme]
    peer = _ip(peer_ip)
    if peer is None:
        raise DialRefused("not_peer_address", "the peer's own address is unknown")
    named = _ip(host)
    addresses = {str(named)} if named is not None else await _resolve(host, port)
    if str(peer) not in addresses:
        raise DialRefused(
            "not_peer_address", f"{host[:100]} is not the address this peer is connected from ({peer_ip})"
        )
    check_private(str(peer), allow_private)
    return str(peer), port
