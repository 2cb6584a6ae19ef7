"""The span list as the DHT and the tracker together know it (#18 spec item 6: the portal as a reader).

``/api/v1/models/<model>/spans/`` lists the tracker's online, trusted nodes and, beside them, the nodes the
portal's DHT client (:func:`portal.swarm.dht_reader.reader`, the one the health map reads) finds announced in the
DHT and the tracker does not list: a ``--dht-only`` node, or one that joined while the portal was down. Their
records were verified by ``swarmnode.dht`` (signature, node key, expiry). A node the tracker knows and keeps off
its list (banned, its owner banned, suspended or under the reputation threshold) stays off it here too, under
the same key or at the same URL; a private address is listed only where the tracker would list one
(``ALLOW_PRIVATE_PEERS``); and where unknown nodes are not trusted at all (``REPUTATION_PRIOR`` under
``REPUTATION_THRESHOLD``) no DHT-only node is listed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

from portal.reputation import scoring
from portal.swarm.dht_reader import reader
from portal.swarm.models import Node, SwarmModel
from swarmnode.relaying.peer_address import serves_privately


def _dialable(url: str) -> bool:
    """Whether the span list may name ``url``: the tracker's rule (``ALLOW_PRIVATE_PEERS``), since every client
    reading the list dials what it names (a private address there would make them probe a LAN, #17 finding 12)."""
    if settings.ALLOW_PRIVATE_PEERS:
        return True
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return bool(host) and not serves_privately(host)


def dht_only_spans(model: SwarmModel, listed: list[Node]) -> list[dict]:
    """Span-list entries of ``model``'s nodes that the DHT lists and ``listed`` (the tracker's spans) does not.

    Args:
        model: the catalogued model.
        listed: the nodes the tracker lists for it (online and trusted).

    Returns:
        One entry per DHT node, with the fields of ``portal.api.serializers.SpanSerializer`` (``id`` and
        ``reputation`` None: the tracker has no standing for it) and ``source: "dht"``; cheapest first.
    """
    if settings.REPUTATION_PRIOR < settings.REPUTATION_THRESHOLD:
        return []
    dht = reader()
    if dht is None:
        return []
    peers = [p for p in dht.peers(model.name) if p.state == "online" and p.model == model.name and _dialable(p.url)]
    if not peers:
        return []
    known = {n.public_key for n in listed if n.public_key} | {n.url for n in listed}
    keys = {p.public_key for p in peers if p.public_key}
    urls = {p.url for p in peers}
    tracked = Node.objects.filter(public_key__in=keys) | Node.objects.filter(model=model, url__in=urls)
    blocked_nodes = tracked.exclude(pk__in=scoring.trusted(Node.objects.visible()).values("pk"))
    blocked = set()
    for key, url in blocked_nodes.values_list("public_key", "url"):
        blocked |= {key, url} - {""}
    rows = [
        {
            "id": None,
            "url": p.url,
            "relay": p.relay,
            "model": model.name,
            "start_block": p.start_block,
            "end_block": p.end_block,
            "num_blocks": model.num_blocks,
            "hidden_size": model.hidden_size,
            "dtype": p.dtype,
            "cache_tokens_left": p.cache_tokens_left,
            "max_session_length": p.max_session_length,
            "throughput": p.throughput,
            "backend": p.backend,
            "device": p.device,
            "version": p.version,
            "public_key": p.public_key,
            "manifest": p.manifest,
            "span_digest": p.span_digest,
            "reputation": None,
            "source": "dht",
        }
        for p in peers
        if p.end_block <= model.num_blocks and not ({p.public_key, p.url} & (known | blocked))
    ]
    return sorted(rows, key=lambda r: (r["start_block"], -r["throughput"], r["url"]))
