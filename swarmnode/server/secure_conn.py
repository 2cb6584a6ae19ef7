"""A node's connection after a client's ``secure_hello`` (spec §10): every frame sealed both ways."""

from __future__ import annotations

import asyncio

from swarmnode.protocol import Error, encode
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import ChannelError, SecureChannel, node_accept


class SecureConnection:
    """Wraps a websocket (or a relayed connection): :meth:`send` seals, :meth:`open` opens.

    It is the ``owner`` of the sessions opened through it, so pushed results and errors (§7) that
    the node sends to a session's owner are sealed too.
    """

    def __init__(self, ws, channel: SecureChannel) -> None:
        self.ws = ws
        self.channel = channel
        self._lock = asyncio.Lock()  # sequence numbers must go out in the order they were given

    @classmethod
    async def accept(cls, ws, identity: NodeIdentity, frame: bytes, max_frame_bytes: int) -> SecureConnection | None:
        """Answer a ``secure_hello``; ``None`` (after an ``error`` reply) if it was malformed.

        Sealed frames that would open to more than ``max_frame_bytes`` are later refused unopened (§6.3).
        """
        try:
            reply, channel = node_accept(identity, frame, max_plaintext=max_frame_bytes)
        except ChannelError as exc:
            await ws.send(encode(Error(code=exc.code, message=exc.message)))
            return None
        await ws.send(reply)
        return cls(ws, channel)

    def open(self, frame: bytes | str) -> bytes:
        """The plaintext frame inside a sealed one.

        Raises:
            ChannelError: tampered, replayed, reordered, not sealed or too large (the connection must end).
        """
        return self.channel.open(frame)

    async def send(self, data: bytes) -> None:
        """Seal and send one frame."""
        async with self._lock:
            await self.ws.send(self.channel.seal(data))

    async def close(self) -> None:
        """Close the underlying connection."""
        await self.ws.close()
