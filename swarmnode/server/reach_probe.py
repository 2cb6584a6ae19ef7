"""A stand-in for a node that only answers ``info``, so a relay can dial it back (``swarmnode doctor``).

It listens where the node would (``host``/``port``/``public-host``), under the node's identity when its key
file exists, and asks the relay for the same dial-back a starting node asks for (spec §9.3) without
loading a model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from websockets.asyncio.server import serve

from swarmnode.protocol import Info, InfoReply, ProtocolError, decode, encode
from swarmnode.server.config import WS_PATH
from swarmnode.server.relay_link import RelayLink
from swarmnode.trust.identity import NodeIdentity
from swarmnode.version import __version__

log = logging.getLogger("swarmnode.doctor")


class InfoProbe:
    """Answers ``info`` with the node's public key on the node's address. Use as an async context manager.

    Args:
        config: the node's ``NodeConfig`` (``host``, ``port``, ``public_host``, ``identity``, ``limits``).
    """

    def __init__(self, config) -> None:
        self.config = config
        self.limits = config.limits  # RelayLink reads node.limits
        path = config.identity
        # An existing key file: the relay sees this node's real key. Else a throwaway key (creates no file).
        self.identity = NodeIdentity.load_or_create(path) if path and Path(path).is_file() else NodeIdentity.generate()
        self.url = ""
        self.port = 0
        self._server = None

    async def _answer(self, ws) -> None:
        async for frame in ws:
            try:
                msg = decode(frame)
            except ProtocolError:
                return
            if isinstance(msg, Info):
                await ws.send(encode(InfoReply(id=msg.id, version=__version__, public_key=self.identity.public_key)))

    async def __aenter__(self) -> InfoProbe:
        self._server = await serve(
            self._answer, self.config.host, self.config.port, max_size=1 << 16, compression=None, ping_interval=None
        )
        await self._server.__aenter__()
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://{self.config.public_host or self.config.host}:{self.port}{WS_PATH}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self._server.__aexit__(*exc)


async def dial_back(
    probe: InfoProbe, candidates: list[str], token: str, token_relays: list[str]
) -> tuple[bool | None, str]:
    """Ask the first relay that answers to dial ``probe`` back.

    Returns:
        ``(reachable, relay)``; ``(None, "")`` when no relay answered.
    """
    link = RelayLink(probe, lambda: candidates, token=token, token_relays=token_relays)
    for relay in candidates:
        try:
            ws, registered = await link.attach(relay, dial_back=probe.url)
        except Exception as exc:
            log.info("dial-back check via %s failed: %s", relay, exc)
            continue
        await ws.close()
        return registered["reachable"] == "yes", relay
    return None, ""
