"""The swarm as a joining or rebalancing node sees it, and the span it picks (``--blocks auto``)."""

from __future__ import annotations

import logging
import random
import statistics

from swarmnode.server.selection import Placement, block_throughput, choose_span, placement_from_span

log = logging.getLogger("swarmnode.placement")


def swarm_view(model: str, portal: str | None, peers: list[str], exclude_url: str = "", probe_limit: int = 32) -> list:
    """The nodes serving ``model`` that the tracker lists and that the given peers say they are.

    When the tracker lists at most ``probe_limit`` nodes, each is asked directly and the silent ones dropped.

    Returns:
        :class:`~swarmnode.client.remote.PeerInfo` objects (a tracker or peer that fails is skipped).
    """
    from swarmnode.client.routing import probe_peers
    from swarmnode.client.tracker import TrackerError, fetch_spans

    found = {}
    if portal:
        try:
            for p in fetch_spans(portal, model):
                found[p.url] = p
        except TrackerError as exc:
            log.warning("cannot read the swarm from the tracker: %s", exc)
    if 0 < len(found) <= probe_limit:
        # The tracker lists a node until its heartbeats have been missing for a while; in a small
        # swarm asking each node is cheap and tells a dead one apart at once.
        alive, _ = probe_peers(list(found), timeout=3.0)
        found = {p.url: p for p in alive if p.model == model}
    urls = [u for u in peers if u and u not in found]
    if urls:
        infos, errors = probe_peers(urls, timeout=5.0)
        for u, e in errors.items():
            log.info("peer %s did not answer: %s", u, e)
        for p in infos:
            if p.model == model:
                found[p.url] = p
    return [p for u, p in found.items() if u != exclude_url and p.state != "draining"]


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
