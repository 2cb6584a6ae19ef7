"""Direct connections per remote address, and the refusal a client over the cap gets (spec §6.5)."""

from __future__ import annotations

import logging

from swarmnode.protocol import Error, encode

log = logging.getLogger("swarmnode.server")


class ConnectionsPerAddress:
    """Counts open direct connections per remote address against a cap (0: no cap).

    Args:
        cap: connections one address may hold open at once.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held: dict[str, int] = {}

    def admit(self, ip: str) -> bool:
        """Count one more connection from ``ip``; ``False`` (not counted) when it has its share."""
        held = self._held.get(ip, 0)
        if self.cap > 0 and held >= self.cap:
            return False
        self._held[ip] = held + 1
        return True

    def release(self, ip: str) -> None:
        """One connection from ``ip`` closed."""
        left = self._held.get(ip, 1) - 1
        if left > 0:
            self._held[ip] = left
        else:
            self._held.pop(ip, None)

    async def refuse(self, ws, ip: str) -> None:
        """Tell the client why (``too_many_connections``) and close with 1008 (policy violation)."""
        log.warning("refusing a connection from %s: %d already open", ip, self.cap)
        error = Error(code="too_many_connections", message=f"this node accepts {self.cap} connections per address")
        try:
            await ws.send(encode(error))
            await ws.close(1008, "too many connections")
        except Exception:  # it left already
            pass
