"""Live updates of swarm health over the channel layer: the tracker says "model X changed", every open
health map (``consumers.HealthConsumer``) re-reads and pushes the new state.

Only changes of coverage are announced (a node registers, comes online, leaves, expires or is banned),
not every heartbeat, so the hot path stays one UPDATE and one INSERT.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger("portal.swarm.live")

HEALTH_GROUP = "swarm-health"


def _send(model: str) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(HEALTH_GROUP, {"type": "health.changed", "model": model})
    except Exception as exc:  # a channel-layer hiccup must never fail a tracker request
        log.warning("could not announce a health change of %s: %s", model, exc)


def health_changed(model: str) -> None:
    """Tell open health maps that ``model``'s coverage changed (once the current transaction commits)."""
    transaction.on_commit(lambda: _send(model))
