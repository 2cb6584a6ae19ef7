"""Choosing a chain of spans that covers every block of the model, at the lowest expected cost.

The swarm is a graph whose vertices are block boundaries ``0..L`` and whose edges are nodes: a
node serving ``[a, b)`` is an edge ``a -> b`` (or ``s -> b`` for every ``s`` in ``[a, b)`` when
partial spans are allowed). An edge costs what using that node adds to a step:

    rtt_weight * RTT + blocks_used / per_block_throughput + penalties

(RTT from the client's pings; throughput as the node measured and announced it; penalties for a
relay hop never measured, too little free cache, recent failures, low reputation
(``reputation_penalty_s * (1 - score)`` with the tracker's score, the prior for nodes without one);
a relayed node pinged through its relay pays its measured RTT, i.e. exactly the relay's extra
latency). Edges only go forward, so the cheapest chain is a dynamic programme over boundaries in
increasing order, vectorized over the nodes that end at each boundary: ~10 ms for 10,000 nodes.
Everything here is a pure function of its arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from swarmnode import discovery
from swarmnode.client.remote import POOL, RemoteSpan
from swarmnode.discovery import PeerInfo


class SwarmNotCovering(Exception):
    """No chain of known nodes covers the whole model (or the asked block range).

    Attributes:
        uncovered: blocks no usable node serves.
    """

    def __init__(self, model: str, num_blocks: int, uncovered: list[int], what: str = "") -> None:
        ranges = _ranges(uncovered)
        msg = what or f"no chain of nodes covers all {num_blocks} blocks of {model!r}"
        msg += f"; uncovered blocks: {ranges}" if uncovered else "; spans do not line up end to start"
        super().__init__(msg)
        self.uncovered = uncovered


def _ranges(blocks: list[int]) -> str:
    out, start = [], None
    for i, b in enumerate(blocks):
        if start is None:
            start = b
        if i + 1 == len(blocks) or blocks[i + 1] != b + 1:
            out.append(f"{start}-{b}" if start != b else str(b))
            start = None
    return ", ".join(out)


def uncovered_blocks(peers: list[PeerInfo], num_blocks: int, start: int = 0, end: int | None = None) -> list[int]:
    """Blocks in ``[start, end)`` that no peer serves."""
    end = num_blocks if end is None else end
    covered = set()
    for p in peers:
        covered.update(range(max(p.start_block, start), min(p.end_block, end)))
    return [b for b in range(start, end) if b not in covered]


@dataclass(frozen=True)
class RoutingPolicy:
    """How hops are priced.

    ``latency`` mode prices one decoding step (one token); ``throughput`` mode prices a step of
    ``tokens`` positions with the nodes' prefill speed, for long prompts and batch scoring.
    """

    mode: str = "latency"  # "latency" or "throughput"
    tokens: int = 512  # positions per step assumed in throughput mode
    rtt_weight: float = 1.0  # 1.0: a round trip via the client per hop; 0.5 with server-to-server push
    default_rtt_s: float = 0.05  # RTT assumed for a node never pinged
    default_block_s: float = 0.005  # seconds per block per token for a node that announced no throughput
    # A relayed node never pinged: the extra hop through its relay is assumed to cost this much. Once
    # pinged at its relay address, its measured RTT (which includes the relay) prices it instead.
    relay_penalty_s: float = 0.1
    low_cache_penalty_s: float = 5.0  # too little free cache: the session would likely be refused
    failure_penalty_s: float = 1.0  # per recent failure of the node (see the client's ban list)
    reputation_penalty_s: float = 0.05  # x (1 - the tracker's score): prefer trusted nodes at equal speed
    unknown_reputation: float = 0.5  # score assumed for nodes the tracker did not score (its prior)
    min_reputation: float = 0.0  # never route through nodes scored below this (the tracker already drops < 0.3)
    allow_partial: bool = False  # start a hop inside a node's span (the node must support it)

    def __post_init__(self) -> None:
        if self.mode not in ("latency", "throughput"):
            raise ValueError(f"routing mode must be 'latency' or 'throughput', got {self.mode!r}")


@dataclass(frozen=True)
class Hop:
    """One node of a route and the blocks ``[start, end)`` it runs for it."""

    peer: PeerInfo
    start: int
    end: int
    cost_s: float = 0.0

    @property
    def url(self) -> str:
        """The node's URL."""
        return self.peer.url


class PeerIndex:
    """Known peers as arrays, built once per discovery so that each :func:`route` is vectorized.

    Args:
        peers: every known node.
    """

    def __init__(self, peers: list[PeerInfo]) -> None:
        self.peers = list(peers)
        n = len(self.peers)
        self.urls = [p.url for p in self.peers]
        self.position = {u: i for i, u in enumerate(self.urls)}
        self.start = np.fromiter((p.start_block for p in self.peers), np.int64, n)
        self.end = np.fromiter((p.end_block for p in self.peers), np.int64, n)
        self.rate = np.fromiter((p.throughput for p in self.peers), np.float64, n)
        self.prefill = np.fromiter((p.prefill_throughput for p in self.peers), np.float64, n)
        self.relay = np.fromiter((p.relay for p in self.peers), np.bool_, n)
        self.cache = np.fromiter((p.cache_tokens_left for p in self.peers), np.int64, n)
        self.open = np.fromiter((p.state != "draining" for p in self.peers), np.bool_, n)
        self.reputation = np.fromiter(
            (np.nan if p.reputation is None else p.reputation for p in self.peers), np.float64, n
        )
        self.models = {
            m: np.fromiter((p.model == m for p in self.peers), np.bool_, n) for m in {p.model for p in self.peers}
        }

    def __len__(self) -> int:
        return len(self.peers)

    def mask(self, model: str, exclude: frozenset[str] | set[str], min_reputation: float = 0.0) -> np.ndarray:
        """Peers of ``model`` that take new sessions, are not in ``exclude`` and score at least ``min_reputation``."""
        keep = self.open.copy()
        if min_reputation > 0:
            keep &= ~(self.reputation < min_reputation)  # unknown (NaN) scores are kept
        if model:
            keep &= self.models.get(model, np.zeros(len(self.peers), np.bool_))
        for url in exclude:
            i = self.position.get(url)
            if i is not None:
                keep[i] = False
        return keep


def hop_costs(
    peers: PeerIndex,
    idx: np.ndarray,
    policy: RoutingPolicy,
    rtts: Mapping[str, float],
    failures: Mapping[str, int],
    cache_tokens_needed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed cost (seconds) and cost per block used (seconds) of the peers ``idx``, as two ``(N,)`` arrays."""
    urls = peers.urls
    get, default = rtts.get, policy.default_rtt_s
    rtt = (
        np.fromiter((get(urls[i], default) for i in idx), np.float64, len(idx)) if rtts else np.full(len(idx), default)
    )
    relayed = peers.relay[idx]
    if rtts and relayed.any():  # measured through the relay: the RTT already holds the relay's extra latency
        relayed = relayed & ~np.fromiter((urls[i] in rtts for i in idx), np.bool_, len(idx))
    fixed = policy.rtt_weight * rtt + policy.relay_penalty_s * relayed
    score = peers.reputation[idx]
    fixed += policy.reputation_penalty_s * (1.0 - np.where(np.isnan(score), policy.unknown_reputation, score))
    if cache_tokens_needed:
        fixed += policy.low_cache_penalty_s * (peers.cache[idx] < cache_tokens_needed)
    if failures:
        where = {int(i): k for k, i in enumerate(idx)}
        for url, n_fail in failures.items():
            k = where.get(peers.position.get(url, -1))
            if k is not None:
                fixed[k] += policy.failure_penalty_s * n_fail
    length = (peers.end[idx] - peers.start[idx]).astype(np.float64)
    if policy.mode == "latency":
        rate, unknown, tokens = peers.rate[idx], policy.default_block_s, 1.0
    else:
        prefill = peers.prefill[idx]
        rate = np.where(prefill > 0, prefill, peers.rate[idx])
        unknown, tokens = policy.tokens * policy.default_block_s, float(policy.tokens)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_block = np.where(rate > 0, tokens / (rate * length), unknown)
    return fixed, per_block


def route(
    peers: list[PeerInfo] | PeerIndex,
    num_blocks: int,
    *,
    start: int = 0,
    end: int | None = None,
    model: str = "",
    exclude: frozenset[str] | set[str] = frozenset(),
    rtts: Mapping[str, float] | None = None,
    failures: Mapping[str, int] | None = None,
    policy: RoutingPolicy | None = None,
    cache_tokens_needed: int = 0,
) -> list[Hop]:
    """The cheapest chain of hops running blocks ``[start, end)`` in order.

    Args:
        peers: every known node (any model; other models and draining nodes are skipped), or a
            :class:`PeerIndex` of them built once for many routes.
        num_blocks: blocks of the model.
        start, end: the block range to cover (default: the whole model).
        model: the model's name ("" accepts any).
        exclude: URLs not to use (banned nodes).
        rtts: smoothed RTT per URL in seconds (unknown: ``policy.default_rtt_s``).
        failures: recent failures per URL (each adds ``policy.failure_penalty_s``).
        policy: how to price hops.
        cache_tokens_needed: the session's length; nodes with less free cache are penalized.

    Returns:
        The hops in block order; the first starts at ``start``, each next one where the previous
        ended, the last ends at ``end``.

    Raises:
        SwarmNotCovering: no chain exists (``uncovered`` names the blocks nobody serves).
    """
    policy = policy or RoutingPolicy()
    end = num_blocks if end is None else end
    if not 0 <= start < end <= num_blocks:
        raise ValueError(f"cannot route blocks [{start}, {end}) of a {num_blocks}-block model")
    index = peers if isinstance(peers, PeerIndex) else PeerIndex(peers)
    keep = index.mask(model, exclude, policy.min_reputation) & (index.end > start) & (index.end <= end)
    if not policy.allow_partial:
        keep &= index.start >= start
    sel = np.flatnonzero(keep)
    fixed, per_block = hop_costs(index, sel, policy, rtts or {}, failures or {}, cache_tokens_needed)
    starts, ends = index.start[sel], index.end[sel]
    dist = np.full(end + 1, np.inf)
    dist[start] = 0.0
    back: dict[int, tuple[int, int]] = {}  # boundary -> (peer index, hop start)
    order = np.argsort(ends, kind="stable")
    bounds = np.searchsorted(ends[order], np.arange(end + 2))
    for e in range(start + 1, end + 1):
        idx = order[bounds[e] : bounds[e + 1]]
        if idx.size == 0:
            continue
        if policy.allow_partial:
            cols = np.arange(start, e)  # candidate hop starts
            cost = dist[None, start:e] + fixed[idx, None] + (e - cols)[None, :] * per_block[idx, None]
            cost[cols[None, :] < starts[idx, None]] = np.inf
            flat = int(np.argmin(cost))
            best = cost.flat[flat]
            i, s = int(idx[flat // cost.shape[1]]), int(cols[flat % cost.shape[1]])
        else:
            cost = dist[starts[idx]] + fixed[idx] + (e - starts[idx]) * per_block[idx]
            k = int(np.argmin(cost))
            best, i = cost[k], int(idx[k])
            s = int(starts[i])
        if np.isfinite(best):
            dist[e] = best
            back[e] = (i, s)
    if not np.isfinite(dist[end]):
        what = f"no chain of nodes covers blocks {start}-{end - 1} of {model or 'the model'!r}"
        if (start, end) == (0, num_blocks):
            what = ""
        usable = [index.peers[i] for i in sel]
        raise SwarmNotCovering(model, num_blocks, uncovered_blocks(usable, num_blocks, start, end), what)
    hops, e = [], end
    while e != start:
        i, s = back[e]
        hops.append(Hop(index.peers[sel[i]], s, e, float(fixed[i] + (e - s) * per_block[i])))
        e = s
    return hops[::-1]


def find_chain(
    peers: list[PeerInfo],
    num_blocks: int,
    model: str = "",
    exclude: frozenset[str] | set[str] = frozenset(),
    rtts: Mapping[str, float] | None = None,
    policy: RoutingPolicy | None = None,
) -> list[PeerInfo]:
    """The cheapest chain of whole spans from block 0 to ``num_blocks`` (see :func:`route`).

    With nothing measured (no RTTs, no throughputs) every hop costs the same fixed amount plus
    the same per block, so the chain with the fewest hops wins.

    Raises:
        SwarmNotCovering: no such chain exists.
    """
    policy = policy or RoutingPolicy()
    if policy.allow_partial:
        raise ValueError("find_chain returns whole spans; use route() for partial spans")
    return [h.peer for h in route(peers, num_blocks, model=model, exclude=exclude, rtts=rtts, policy=policy)]


def probe_peers(urls: list[str], timeout: float = 10.0) -> tuple[list[PeerInfo], dict[str, str]]:
    """Ask each URL what it serves; return the answers and the errors of those that failed.

    Through the client's connection pool: the connection stays open for the session that follows.
    """
    return discovery.probe_peers(urls, timeout, ask=_pooled_info)


def _pooled_info(url: str, timeout: float) -> PeerInfo:
    return POOL.use(url, timeout, RemoteSpan.info)
