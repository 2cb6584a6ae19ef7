"""The relays a node behind NAT can attach to: the portal's own and directly reachable nodes that offer to relay."""

from __future__ import annotations

from portal.relay import relaying
from portal.swarm.models import Node


def relay_directory(portal_relay_url: str) -> list[dict]:
    """``[{url, kind, capacity, nodes?}]``: the portal's relay first, then online relaying nodes.

    Nodes ask each relay for its current load themselves (``relay_status``, spec §9.5) before attaching,
    so the list only needs to say who offers to relay.
    """
    load = relaying.relay_load()
    out = [{"url": portal_relay_url, "kind": "portal", "capacity": load["capacity"], "nodes": load["nodes"]}]
    offering = (
        Node.objects.visible()
        .filter(state=Node.State.ONLINE, relay=False, relay_capacity__gt=0)
        .exclude(url="")
        .order_by("id")
        .values_list("url", "relay_capacity")[:200]
    )
    out += [{"url": url.rstrip("/") + "/relay", "kind": "node", "capacity": capacity} for url, capacity in offering]
    return out
