"""Swarm health: which blocks of each model are covered by online nodes (page and JSON share this)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from portal.swarm.dht_reader import dht_nodes_json
from portal.swarm.models import Node, SwarmModel

RECENTLY_OFFLINE = timedelta(hours=1)  # offline nodes stay on the map this long


def block_ranges(blocks: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted ``blocks`` as inclusive ``(first, last)`` pairs."""
    runs: list[tuple[int, int]] = []
    for b in blocks:
        if runs and runs[-1][1] == b - 1:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs


def describe_ranges(blocks: list[int]) -> str:
    """``12-17, 20`` for blocks 12..17 and 20."""
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in block_ranges(blocks))


def _node_json(node: Node) -> dict:
    return {
        "id": node.pk,
        "owner": node.owner.username,
        "start_block": node.start_block,
        "end_block": node.end_block,
        "state": node.state,
        "connection": node.connection,
        "url": node.url,
        "throughput": node.throughput,
        "cache_tokens_left": node.cache_tokens_left,
        "backend": node.backend,
        "device": node.device,
        "dtype": node.dtype,
        "version": node.version,
        "last_seen_at": node.last_seen_at.isoformat(),
    }


def model_health(model: SwarmModel, nodes: list[Node], dht_nodes: list[dict] | None = None) -> dict:
    """Coverage of one model by ``nodes`` (only online ones count as covering) and by the nodes only the DHT
    lists (``dht_nodes``: entries of ``portal.swarm.dht_reader.dht_nodes_json``)."""
    dht_nodes = dht_nodes or []
    covered = set()
    for n in nodes:
        if n.state == Node.State.ONLINE:
            covered.update(range(n.start_block, n.end_block))
    for d in dht_nodes:
        covered.update(range(d["start_block"], d["end_block"]))
    uncovered = [b for b in range(model.num_blocks) if b not in covered]
    banner = "" if not uncovered else f"broken: blocks {describe_ranges(uncovered)} uncovered"
    return {
        "model": model.name,
        "kind": model.kind,  # chat, completion or embedding (portal.swarm.catalogue)
        "architecture": model.architecture,
        "num_blocks": model.num_blocks,
        "covered": not uncovered,
        "uncovered_blocks": uncovered,
        "banner": banner,
        "online_nodes": sum(n.state == Node.State.ONLINE for n in nodes) + len(dht_nodes),
        "nodes": [_node_json(n) for n in nodes] + dht_nodes,
    }


def swarm_health(model_name: str | None = None, now: datetime | None = None) -> dict:
    """``{"models": [model_health, ...]}`` for every model (or one), active and recently offline nodes."""
    now = now or timezone.now()
    models = SwarmModel.objects.all()
    if model_name is not None:
        models = models.filter(name=model_name)
    nodes = (
        Node.objects.visible()
        .filter(model__in=models)
        .exclude(state=Node.State.OFFLINE, last_seen_at__lt=now - RECENTLY_OFFLINE)
        .select_related("owner")
        .order_by("start_block", "id")
    )
    by_model: dict[int, list[Node]] = {}
    for n in nodes:
        by_model.setdefault(n.model_id, []).append(n)
    return {
        "models": [
            model_health(m, by_model.get(m.pk, []), dht_nodes_json(m.name, by_model.get(m.pk, []))) for m in models
        ]
    }
