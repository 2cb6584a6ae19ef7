"""Dial-back (spec §9.3): is a node that asks to attach to a relay reachable directly after all?"""

from __future__ import annotations

import asyncio
import hmac
import logging

from websockets.asyncio.client import connect

from swarmnode.protocol import Info, InfoReply, decode, encode
from swarmnode.relaying.peer_address import DialRefused, dial_target

log = logging.getLogger("swarmnode.relay")


async def check_dial_back(
    url: str, public_key: str, timeout: float, peer_ip: str | None, allow_private: bool = False
) -> bool:
    """Whether ``url`` answers ``info`` with ``public_key``: the node there is reachable directly (§9.3).

    Args:
        url: the node's own URL, as it asks us to dial it.
        public_key: the key the node attached with; the answer must carry it.
        timeout: seconds for the whole attempt.
        peer_ip: the address the node's link comes from. Only that address is dialled (whatever host the URL
            names), so a node cannot make a relay knock on a third party's door; ``None`` (unknown): no dial.
        allow_private: also dial private, loopback and link-local addresses (a LAN swarm, tests).

    Returns:
        False too when the URL is refused unseen (another host, a private address): not reachable *there*.
    """
    try:
        ip, port = await dial_target(url, peer_ip or "", allow_private)
    except DialRefused as exc:
        log.info("dial-back to %s refused without dialling: %s %s", url[:200], exc.code, exc.message)
        return False
    try:
        async with asyncio.timeout(timeout):
            # host/port pin the connection to the checked address; the URL still names the host (Host, TLS SNI).
            async with connect(
                url, host=ip, port=port, proxy=None, max_size=1 << 20, compression=None, ping_interval=None
            ) as ws:
                await ws.send(encode(Info(id=1)))
                reply = decode(await ws.recv())
        return isinstance(reply, InfoReply) and hmac.compare_digest(reply.public_key, public_key)
    except Exception as exc:  # refused, dropped by a NAT, timed out, answered garbage
        log.info("dial-back to %s failed: %s %s", url[:200], type(exc).__name__, exc)
        return False
