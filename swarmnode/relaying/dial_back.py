"""Dial-back (spec §9.3): is a node that asks to attach to a relay reachable directly after all?"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable

from websockets.asyncio.client import connect

from swarmnode.protocol import Info, InfoReply, decode, encode

log = logging.getLogger("swarmnode.relay")


def check_dial_back(url: str, public_key: str, timeout: float) -> Awaitable[bool]:
    """Whether ``url`` answers ``info`` with ``public_key``: the node there is reachable directly (§9.3)."""

    async def attempt() -> bool:
        if not url.startswith(("ws://", "wss://")):
            return False
        try:
            async with asyncio.timeout(timeout):
                async with connect(url, max_size=1 << 20, compression=None, ping_interval=None) as ws:
                    await ws.send(encode(Info(id=1)))
                    reply = decode(await ws.recv())
            return isinstance(reply, InfoReply) and hmac.compare_digest(reply.public_key, public_key)
        except Exception as exc:  # refused, dropped by a NAT, timed out, answered garbage
            log.info("dial-back to %s failed: %s %s", url[:200], type(exc).__name__, exc)
            return False

    return attempt()
