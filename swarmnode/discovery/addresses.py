"""Which addresses a node or client dials on someone else's word: public ones, unless the operator allows private.

A tracker lists whatever URLs nodes registered, and a stranger can register a node. Left unchecked, every node,
client and gateway reading the tracker would dial (probe) an address of the stranger's choosing inside its own
network: the cloud metadata service (169.254.169.254), an admin port on loopback, a host on the operator's LAN
(a blind request from a trusted address, #17 finding 12). So URLs learned from a tracker are dialled only at
public addresses, unless the operator allows private ones (a LAN or loopback swarm); URLs the operator typed
(``--peers``) are dialled as given. The push code checks its next hops with the same rule
(:mod:`swarmnode.server.push_routes`). Pure checks here, plus one blocking resolve-and-dial; no asyncio.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

#: The values of a "may we dial private addresses" switch (``--push-private``): allow, refuse, or auto.
PRIVATE_MODES = ("auto", "allow", "refuse")


class PrivateAddress(ValueError):
    """A URL learned from a tracker names a private, loopback, link-local or reserved address (or no host at all)."""


def is_private_host(host: str) -> bool:
    """Whether ``host`` (an IP literal or ``localhost``) is a loopback, private, link-local or reserved address.

    ``0.0.0.0`` and ``::`` (every interface) count as public: such a node is on whatever network it sits on.
    A name other than ``localhost`` counts as public: nothing is resolved here (see :func:`public_address`).
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a name: the node advertises itself under a public name
    return not ip.is_unspecified and not ip.is_global


def allows_private(mode: str, own_host: str) -> bool:
    """Whether private addresses may be dialled under ``mode`` (:data:`PRIVATE_MODES`) by a server on ``own_host``.

    ``auto`` allows them when ``own_host`` is itself private (a LAN, tests on loopback).

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in PRIVATE_MODES:
        raise ValueError(f"must be one of {PRIVATE_MODES}, got {mode!r}")
    return mode == "allow" or (mode == "auto" and is_private_host(own_host))


def tracker_is_local(portal: str | None) -> bool:
    """Whether the tracker at ``portal`` sits on loopback or a private network: then it lists a local swarm.

    A tracker the operator runs on its own network (tests, a LAN) lists nodes on that network; one on a public
    address has no business listing private ones.
    """
    try:
        host = urlsplit(portal or "").hostname or ""
    except ValueError:
        return False
    return bool(host) and is_private_host(host)


def url_host_port(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``ws://``, ``wss://``, ``http://`` or ``https://`` URL.

    Raises:
        PrivateAddress: not such a URL (nothing to check, so nothing to dial).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise PrivateAddress(f"not a valid URL: {url[:200]!r}") from None
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise PrivateAddress(f"not a ws:// or wss:// URL: {url[:200]!r}")
    return parts.hostname, port or (443 if parts.scheme in ("wss", "https") else 80)


def names_private_host(url: str) -> bool:
    """Whether ``url``'s host is a private IP literal or ``localhost`` (or the URL has no host): no DNS lookup."""
    try:
        host, _ = url_host_port(url)
    except PrivateAddress:
        return True
    return is_private_host(host)


def public_address(url: str) -> tuple[str, int]:
    """The ``(ip, port)`` to dial for ``url``, after checking that every address its host resolves to is public.

    Dial the address returned rather than the name: a name that resolves elsewhere a moment later (DNS
    rebinding) then cannot slip a private address past the check.

    Raises:
        PrivateAddress: the host resolves to no address, or to a private, loopback, link-local, multicast or
            reserved one.
    """
    host, port = url_host_port(url)
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError:
        raise PrivateAddress(f"{host[:100]} does not resolve") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise PrivateAddress(f"{host[:100]} does not resolve")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise PrivateAddress(f"{host[:100]} is a private, loopback or reserved address (only public ones dialled)")
    return addresses[0], port


def dial_public(url: str, timeout: float) -> socket.socket:
    """A TCP connection to ``url``'s host, at an address :func:`public_address` checked.

    Raises:
        PrivateAddress: see :func:`public_address`.
        OSError: the connection failed.
    """
    address, port = public_address(url)
    return socket.create_connection((address, port), timeout=timeout)
