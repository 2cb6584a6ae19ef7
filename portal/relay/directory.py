"""The relays a node behind NAT can attach to: the portal's own and directly reachable nodes that offer to relay."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

from portal.relay import relaying
from portal.swarm.models import Node
from swarmnode.relaying import serves_privately


def _dialable(url: str) -> bool:
    """Whether nodes may be sent to ``url``: every node behind NAT dials the relays listed here, so a stranger
    registering a private address (a metadata service, a LAN router) must not get it dialled by all of them."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return bool(host) and (settings.ALLOW_PRIVATE_PEERS or not serves_privately(host))


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
    out += [
        {"url": url.rstrip("/") + "/relay", "kind": "node", "capacity": capacity}
        for url, capacity in offering
        if _dialable(url)
    ]
    return out
