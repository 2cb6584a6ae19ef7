"""The swarm as a joining or rebalancing node sees it, and the span it picks (``--blocks auto``)."""

from __future__ import annotations

import logging
import random
import statistics

from swarmnode.discovery import swarm_view
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
) -> tuple[int, int]:
    """The span a joining node of ``capacity`` blocks should serve, from the swarm's current state.

    Args:
        own_rate: this node's block-tokens/s if known (from the throughput cache), else the swarm's median.
        rng: jitter so that simultaneous joiners spread out (default: a fresh random generator).
    """
    view = swarm_view(model, portal, peers)
    others = placements(view)
    rate = own_rate or (statistics.median(p.rate for p in others) if others else 1.0)
    start, end = choose_span(block_throughput(others, num_blocks), capacity, rate, rng or random.Random())
    log.info("--blocks auto: %d known nodes; chose %d:%d (capacity %d blocks)", len(view), start, end, capacity)
    return start, end
