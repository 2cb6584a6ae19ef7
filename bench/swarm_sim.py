"""Pure-Python swarm simulation: 10,000 heterogeneous nodes joining, leaving and rebalancing.

No model and no network: the same span-selection and routing functions the nodes and clients
run (``swarmnode.server.selection``, ``swarmnode.client.routing``) on simulated swarm states.

Reports, for each model size (30 and 80 blocks by default):

- ``route_ms``: time to compute the cheapest chain over all nodes (median of several runs), whole
  spans and partial spans;
- ``bottleneck / ideal``: the swarm's slowest block throughput reached by ``--blocks auto`` joins,
  over rounds of churn with periodic rebalancing, as a fraction of the upper bound
  ``sum(node rates) / num_blocks``.

Usage: ``python bench/swarm_sim.py --nodes 10000 --blocks 30 80 --rounds 20 --json``
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import numpy as np

from swarmnode.client.routing import PeerIndex, RoutingPolicy, route
from swarmnode.discovery import PeerInfo
from swarmnode.server.selection import Placement, choose_span, rebalance_tput


class SimSwarm:
    """Nodes as placements plus the running block-throughput array they add up to."""

    def __init__(self, num_blocks: int, rng: random.Random) -> None:
        self.num_blocks = num_blocks
        self.rng = rng
        self.tput = np.zeros(num_blocks)
        self.nodes: dict[int, Placement] = {}
        self.capacity: dict[int, int] = {}
        self._next = 0

    def _add(self, nid: int, p: Placement) -> None:
        self.nodes[nid] = p
        self.tput[p.start : p.end] += p.rate / p.length

    def _remove(self, nid: int) -> Placement:
        p = self.nodes.pop(nid)
        self.tput[p.start : p.end] -= p.rate / p.length
        return p

    def join(self, rate: float, capacity: int) -> int:
        """A node joins with ``--blocks auto``."""
        start, end = choose_span(self.tput, capacity, rate, self.rng)
        nid = self._next
        self._next += 1
        self.capacity[nid] = capacity
        self._add(nid, Placement(start, end, rate))
        return nid

    def leave(self, nid: int) -> None:
        """A node leaves (or dies)."""
        self._remove(nid)
        del self.capacity[nid]

    def rebalance_check(self, nid: int, margin: float) -> bool:
        """One node's periodic check; returns whether it moved."""
        me = self.nodes[nid]
        without = self.tput.copy()
        without[me.start : me.end] -= me.rate / me.length
        np.maximum(without, 0.0, out=without)  # float noise
        decision = rebalance_tput(without, me, self.capacity[nid], margin, self.rng)
        if decision.move:
            self._remove(nid)
            self._add(nid, Placement(decision.start, decision.end, me.rate))
        return decision.move

    def bottleneck(self) -> float:
        """The slowest block's throughput."""
        return float(self.tput.min())

    def ideal(self) -> float:
        """Every node's compute spread evenly over all blocks."""
        return sum(p.rate for p in self.nodes.values()) / self.num_blocks


def random_node(rng: random.Random, num_blocks: int) -> tuple[float, int]:
    """A heterogeneous volunteer: rate lognormal over ~2 orders of magnitude, memory for 10-60 % of the model."""
    rate = rng.lognormvariate(np.log(100.0), 1.0)  # block-tokens/s
    capacity = max(1, int(num_blocks * rng.uniform(0.1, 0.6)))
    return rate, capacity


def peers_of(swarm: SimSwarm, rng: random.Random) -> tuple[list[PeerInfo], dict[str, float]]:
    """The swarm as a client sees it (tracker list + pinged RTTs)."""
    peers, rtts = [], {}
    for nid, p in swarm.nodes.items():
        url = f"ws://10.{nid >> 16 & 255}.{nid >> 8 & 255}.{nid & 255}:7000/layerswarm/v1"
        tokens_per_s = p.rate / p.length
        peers.append(PeerInfo(url, "m", p.start, p.end, swarm.num_blocks, 4096, "bfloat16", 8192, 8192, tokens_per_s))
        rtts[url] = rng.uniform(0.005, 0.25)
    return peers, rtts


def time_routes(peers, rtts, num_blocks: int, repeats: int, partial: bool) -> float:
    """Median milliseconds of one :func:`route` call over the whole swarm (a list, or a prebuilt index)."""
    policy = RoutingPolicy(allow_partial=partial)
    route(peers, num_blocks, model="m", rtts=rtts, policy=policy)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        hops = route(peers, num_blocks, model="m", rtts=rtts, policy=policy)
        times.append((time.perf_counter() - started) * 1000)
        assert hops[0].start == 0 and hops[-1].end == num_blocks
    return statistics.median(times)


def simulate(
    num_blocks: int,
    nodes: int,
    rounds: int,
    churn: float,
    check_fraction: float,
    margin: float,
    seed: int,
    outage_every: int = 5,
):
    """Join ``nodes`` nodes, then run ``rounds`` of churn (leave + join, regional outages) with rebalancing."""
    rng = random.Random(seed)
    swarm = SimSwarm(num_blocks, rng)
    started = time.perf_counter()
    for _ in range(nodes):
        swarm.join(*random_node(rng, num_blocks))
    join_s = time.perf_counter() - started
    peers, rtts = peers_of(swarm, rng)  # routes are timed on the full swarm, before churn thins it
    started = time.perf_counter()
    index = PeerIndex(peers)
    index_ms = (time.perf_counter() - started) * 1000
    fractions = [swarm.bottleneck() / swarm.ideal()]
    before_checks: list[float] = []
    moves = 0
    for r in range(rounds):
        ids = list(swarm.nodes)
        for nid in rng.sample(ids, int(len(ids) * churn)):
            swarm.leave(nid)
        target = nodes
        if outage_every and r % outage_every == outage_every - 1:
            # A regional outage: most nodes over one tenth of the model vanish at once, and only
            # half as many newcomers arrive this round: rebalancing must move nodes there.
            lo = rng.randrange(0, num_blocks - num_blocks // 10)
            hit = [n for n, p in swarm.nodes.items() if p.start < lo + num_blocks // 10 and p.end > lo]
            for nid in rng.sample(hit, int(len(hit) * 0.6)):
                swarm.leave(nid)
            target = len(swarm.nodes) + (nodes - len(swarm.nodes)) // 2
        while len(swarm.nodes) < target:
            swarm.join(*random_node(rng, num_blocks))
        before_checks.append(swarm.bottleneck() / swarm.ideal())
        ids = list(swarm.nodes)
        for nid in rng.sample(ids, int(len(ids) * check_fraction)):
            moves += swarm.rebalance_check(nid, margin)
        fractions.append(swarm.bottleneck() / swarm.ideal())
    return {
        "blocks": num_blocks,
        "nodes": len(peers),
        "nodes_at_end": len(swarm.nodes),
        "route_ms": round(time_routes(peers, rtts, num_blocks, 7, partial=False), 2),
        "route_indexed_ms": round(time_routes(index, rtts, num_blocks, 7, partial=False), 2),
        "route_partial_indexed_ms": round(time_routes(index, rtts, num_blocks, 7, partial=True), 2),
        "index_build_ms": round(index_ms, 2),
        "bottleneck_over_ideal_after_joins": round(fractions[0], 4),
        "bottleneck_over_ideal_min_over_churn": round(min(fractions), 4),
        "bottleneck_over_ideal_median_over_churn": round(statistics.median(fractions), 4),
        "bottleneck_over_ideal_final": round(fractions[-1], 4),
        "rounds": rounds,
        "churn_per_round": churn,
        "rebalance_moves": moves,
        "bottleneck_over_ideal_min_before_rebalancing": round(min(before_checks, default=fractions[0]), 4),
        "join_ms_per_node": round(join_s / nodes * 1000, 3),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the simulation and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--blocks", type=int, nargs="+", default=[30, 80])
    parser.add_argument("--rounds", type=int, default=20, help="churn rounds after the initial joins")
    parser.add_argument("--churn", type=float, default=0.05, help="fraction of nodes leaving (and joining) per round")
    parser.add_argument("--check", type=float, default=0.05, help="fraction of nodes running a rebalance check")
    parser.add_argument("--margin", type=float, default=0.05, help="rebalancing margin")
    parser.add_argument("--outage-every", type=int, default=5, help="a regional outage every N rounds (0: never)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = [
        simulate(b, args.nodes, args.rounds, args.churn, args.check, args.margin, args.seed, args.outage_every)
        for b in args.blocks
    ]
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        print(
            f"{r['blocks']:3d} blocks, {r['nodes']} nodes: route {r['route_ms']:.1f} ms from a peer list, "
            f"{r['route_indexed_ms']:.1f} ms indexed (partial spans {r['route_partial_indexed_ms']:.1f} ms; index built"
            f" in {r['index_build_ms']:.1f} ms); bottleneck/ideal after joins "
            f"{r['bottleneck_over_ideal_after_joins']:.1%}, over {r['rounds']} churn rounds min "
            f"{r['bottleneck_over_ideal_min_over_churn']:.1%} median {r['bottleneck_over_ideal_median_over_churn']:.1%}"
            f" ({r['rebalance_moves']} moves; worst right after an outage, before rebalancing: "
            f"{r['bottleneck_over_ideal_min_before_rebalancing']:.1%})"
        )


if __name__ == "__main__":
    main()
