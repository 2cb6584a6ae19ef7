"""The swarm as a joining or rebalancing node sees it, and the span it picks (``--blocks auto``)."""

from __future__ import annotations

import logging
import random
import statistics

from swarmnode.discovery import swarm_view
from swarmnode.models import Checkpoint
from swarmnode.runtime.planning import DoesNotFit, default_memory_budget, parse_bytes, plan_memory
from swarmnode.server.config import NodeConfig, parse_blocks
from swarmnode.server.selection import Placement, block_throughput, choose_span, placement_from_span

log = logging.getLogger("swarmnode.placement")


def placements(view: list, default_rate: float | None = None) -> list[Placement]:
    """Span-selection placements of the peers in ``view`` (unknown speeds get the median known rate)."""
    known = [p.throughput * (p.end_block - p.start_block) for p in view if p.throughput > 0]
    if default_rate is None:
        default_rate = statistics.median(known) if known else 1.0
    return [placement_from_span(p.start_block, p.end_block, p.throughput, default_rate) for p in view]


def auto_blocks(
    model: str,
    num_blocks: int,
    capacity: int,
    portal: str | None,
    peers: list[str],
    own_rate: float = 0.0,
    rng: random.Random | None = None,
    dht: tuple[str, ...] = (),
) -> tuple[int, int]:
    """The span a joining node of ``capacity`` blocks should serve, from the swarm's current state.

    Args:
        own_rate: this node's block-tokens/s if known (from the throughput cache), else the swarm's median.
        rng: jitter so that simultaneous joiners spread out (default: a fresh random generator).
        dht: DHT bootstrap multiaddrs: the nodes the DHT lists count too.
    """
    view = swarm_view(model, portal, peers)
    if dht:
        from swarmnode.server.dht_announce import dht_view

        known = {p.url for p in view}
        view += [p for p in dht_view(model, num_blocks, list(dht)) if p.url not in known and p.state == "online"]
    others = placements(view)
    rate = own_rate or (statistics.median(p.rate for p in others) if others else 1.0)
    start, end = choose_span(block_throughput(others, num_blocks), capacity, rate, rng or random.Random())
    log.info("--blocks auto: %d known nodes; chose %d:%d (capacity %d blocks)", len(view), start, end, capacity)
    return start, end


def choose_blocks(
    config: NodeConfig, checkpoint: Checkpoint, model: str, device: str, precision: str
) -> tuple[int, int, int]:
    """The span a starting node serves: ``--blocks``, ``--blocks auto``, or ``--num-blocks`` from block 0,
    within ``--max-memory``.

    Returns:
        ``(start, end, capacity)``: the span, and how many blocks this node could hold (rebalancing
        may move it to any span of that length).

    Raises:
        DoesNotFit: the asked span does not fit in the memory budget.
    """
    num = checkpoint.num_blocks
    plan = None
    if config.max_memory or config.num_blocks == "auto":
        budget = parse_bytes(config.max_memory) if config.max_memory else default_memory_budget(device)
        # Prompt prefixes kept for reuse (§4.9) take room like cache tokens (ONNX Runtime on CPU only).
        reuse = config.prefix_cache_tokens if device == "cpu" and config.backend != "torch" else 0
        plan = plan_memory(checkpoint, precision, budget, config.cache_tokens + reuse)
    capacity = min(num, plan.max_blocks if plan else int(config.num_blocks or num))
    if config.blocks == "auto" or (not config.blocks and (config.portal or config.peers or config.dht)):
        portal = None if config.dht_only else config.portal
        start, end = auto_blocks(model, num, capacity, portal, list(config.peers), dht=config.dht)
    elif config.blocks:
        start, end = parse_blocks(config.blocks, num)
    elif config.num_blocks:
        count = plan.max_blocks if config.num_blocks == "auto" else int(config.num_blocks)
        start, end = 0, min(num, count)
    else:
        start, end = 0, num
    if plan is not None and end - start > plan.max_blocks:
        raise DoesNotFit(f"blocks {start}:{end} do not fit: {plan.explain(end - start)}")
    return start, end, capacity
