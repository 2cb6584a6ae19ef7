"""Periodic rebalancing: move to where the swarm is weakest, gracefully.

Every ``rebalance_interval`` seconds (± 20 % jitter so nodes do not move in lockstep) the node
reads the swarm's state (tracker and/or ``--peers``) and asks :func:`selection.rebalance` whether
moving would raise the bottleneck by more than ``rebalance_margin``. If so it fetches the new span's
weights while still serving (:meth:`NodeWeights.prefetch`, a no-op for a plain checkpoint), announces
``draining`` (clients open no new sessions on it), lets its open sessions finish (up to
``drain_timeout``), says goodbye to the tracker, and restarts itself on the new span (same port).
It never moves away from a block that it alone serves.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from swarmnode.discovery import swarm_view
from swarmnode.server.blocking import run_blocking
from swarmnode.server.links import probe_links
from swarmnode.server.placement import placements
from swarmnode.server.selection import MoveDecision, Placement, rebalance

log = logging.getLogger("swarmnode.rebalance")


def decide(node, view: list, rng: random.Random | None = None) -> MoveDecision:
    """The rebalancing decision for ``node`` given the swarm ``view`` (the node itself excluded)."""
    rate = node.throughput.decode * (node.end - node.start) if node.throughput.decode > 0 else 0.0
    others = placements(view, default_rate=rate or None)
    me = Placement(node.start, node.end, rate or (others[0].rate if others else 1.0))
    return rebalance(others, me, node.checkpoint.num_blocks, node.capacity, node.config.rebalance_margin, rng)


async def drain(node, timeout: float) -> int:
    """Refuse new sessions and wait for open ones to end; return how many were still open at the deadline."""
    node.state = "draining"
    deadline = time.monotonic() + timeout
    while node.pool.sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return len(node.pool.sessions)


async def rebalance_loop(node, rng: random.Random | None = None) -> None:
    """Check periodically; when a move pays off, drain and ask the node to restart on the new span."""
    cfg = node.config
    rng = rng or random.Random()
    while True:
        await asyncio.sleep(cfg.rebalance_interval * rng.uniform(0.8, 1.2))
        try:
            portal = None if cfg.dht_only else cfg.portal
            view = await run_blocking(swarm_view, node.model_name, portal, list(cfg.peers), node.url)
            if cfg.dht:  # the nodes the DHT lists count too (a --dht-only swarm has no other view)
                view += await run_blocking(_dht_others, node, {p.url for p in view})
            decision = decide(node, view, rng)
            node.links = await probe_links(view, node.start, node.end, cfg.portal)
            for url, q in node.links.items():
                log.info("link to %s: RTT %.1f ms, %.1f MB/s", url, q.rtt_s * 1000, q.bandwidth_bytes_per_s / 1e6)
        except Exception as exc:  # a tracker hiccup must not stop the node
            log.warning("rebalancing check failed: %s", exc)
            continue
        log.info("rebalancing check: %s", decision.reason)
        if not decision.move:
            continue
        try:  # the new span's weights first, while this one is still served (a checkout: nothing to fetch)
            await run_blocking(node.weights.prefetch, decision.start, decision.end)
        except Exception as exc:
            log.warning("not moving to blocks %d:%d: cannot get their weights: %s", decision.start, decision.end, exc)
            continue
        left = await drain(node, cfg.drain_timeout)
        if left:
            log.warning("moving with %d session(s) still open (their clients fail over)", left)
        node.request_move(decision.start, decision.end)
        return


def _dht_others(node, known: set[str]) -> list:
    """The online nodes the DHT lists for this node's model, other than itself and those in ``known``."""
    from swarmnode.server.dht_announce import dht_view

    listed = dht_view(node.model_name, node.checkpoint.num_blocks, list(node.config.dht))
    own = {node.url, getattr(node, "address", node.url)}
    return [
        p
        for p in listed
        if p.state == "online" and p.url not in known | own and p.public_key != node.identity.public_key
    ]


def restart_args(argv: list[str], blocks: tuple[int, int], port: int) -> list[str]:
    """``swarmnode`` arguments to serve ``blocks`` on ``port`` instead, everything else unchanged."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--blocks", "--port", "--num-blocks"):
            skip = "=" not in arg and i + 1 < len(argv)
            continue
        out.append(arg)
    return [*out, "--blocks", f"{blocks[0]}:{blocks[1]}", "--port", str(port)]
