"""Websocket consumer of the health map: pushes ``swarm_health`` whenever coverage changes."""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from portal.swarm.health import swarm_health
from portal.swarm.live import HEALTH_GROUP


@database_sync_to_async
def _health(model: str | None) -> dict:
    return swarm_health(model)


class HealthConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/swarm/health/[?model=NAME]``: the same JSON as ``/api/v1/swarm/health/``, sent on connect and
    after every change. Read-only and public, like the health page."""

    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.model = (query.get("model") or [None])[0]
        await self.channel_layer.group_add(HEALTH_GROUP, self.channel_name)
        await self.accept()
        await self.send_json(await _health(self.model))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(HEALTH_GROUP, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        pass  # nothing to say to the server: the map only listens

    async def health_changed(self, event: dict) -> None:
        """``health.changed`` from the tracker: push the fresh state if it concerns this map."""
        if self.model is None or event.get("model") == self.model:
            await self.send_json(await _health(self.model))
