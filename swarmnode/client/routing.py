"""Choosing a chain of spans that covers every block of the model, at the lowest expected cost.

The swarm is a graph whose vertices are block boundaries ``0..L`` and whose edges are nodes: a
node serving ``[a, b)`` is an edge ``a -> b`` (or ``s -> b`` for every ``s`` in ``[a, b)`` when
partial spans are allowed). An edge costs what using that node adds to a step:

    rtt_weight * RTT + blocks_used / per_block_throughput + penalties

(RTT from the client's pings; throughput as the node measured and announced it; penalties for a
relay hop, too little free cache, recent failures). Edges only go forward, so the cheapest chain
is a dynamic programme over boundaries in increasing order, vectorized over the nodes that end
at each boundary: ~10 ms for 10,000 nodes. Everything here is a pure function of its arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from swarmnode.client.remote import PeerInfo, RemoteError, RemoteSpan


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
    relay_penalty_s: float = 0.1  # a relayed node costs an extra hop through the portal
    low_cache_penalty_s: float = 5.0  # too little free cache: the session would likely be refused
    failure_penalty_s: float = 1.0  # per recent failure of the node (see the client's ban list)
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


_ROW = np.dtype(
    [
        ("start", np.int64),
        ("end", np.int64),
        ("rtt", np.float64),
        ("rate", np.float64),
        ("prefill", np.float64),
        ("relay", np.bool_),
        ("cache", np.int64),
    ]
)


def hop_costs(
    peers: list[PeerInfo],
    policy: RoutingPolicy,
    rtts: Mapping[str, float],
    failures: Mapping[str, int],
    cache_tokens_needed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-peer fixed cost (seconds) and cost per block used (seconds), as two ``(N,)`` arrays."""
    return _costs(_rows(peers, rtts, policy.default_rtt_s), peers, policy, failures, cache_tokens_needed)


def _rows(peers: list[PeerInfo], rtts: Mapping[str, float], default_rtt: float) -> np.ndarray:
    get = rtts.get
    rows = (
        (
            p.start_block,
            p.end_block,
            get(p.url, default_rtt),
            p.throughput,
            p.prefill_throughput,
            p.relay,
            p.cache_tokens_left,
        )
        for p in peers
    )
    return np.fromiter(rows, dtype=_ROW, count=len(peers))


def _costs(
    rows: np.ndarray,
    peers: list[PeerInfo],
    policy: RoutingPolicy,
    failures: Mapping[str, int],
    cache_tokens_needed: int,
) -> tuple[np.ndarray, np.ndarray]:
    fixed = policy.rtt_weight * rows["rtt"] + policy.relay_penalty_s * rows["relay"]
    if cache_tokens_needed:
        fixed += policy.low_cache_penalty_s * (rows["cache"] < cache_tokens_needed)
    if failures:
        for i, p in enumerate(peers):
            n_fail = failures.get(p.url, 0)
            if n_fail:
                fixed[i] += policy.failure_penalty_s * n_fail
    length = (rows["end"] - rows["start"]).astype(np.float64)
    if policy.mode == "latency":
        rate = rows["rate"]
        unknown = policy.default_block_s
        tokens = 1.0
    else:
        rate = np.where(rows["prefill"] > 0, rows["prefill"], rows["rate"])
        unknown = policy.tokens * policy.default_block_s
        tokens = float(policy.tokens)
    with np.errstate(divide="ignore"):
        per_block = np.where(rate > 0, tokens / (rate * length), unknown)
    return fixed, per_block


def route(
    peers: list[PeerInfo],
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
        peers: every known node (any model; other models and draining nodes are skipped).
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
    partial = policy.allow_partial
    usable = [
        p
        for p in peers
        if start < p.end_block <= end
        and (p.start_block >= start or partial)
        and (not model or p.model == model)
        and p.state != "draining"
        and (not exclude or p.url not in exclude)
    ]
    rows = _rows(usable, rtts or {}, policy.default_rtt_s)
    fixed, per_block = _costs(rows, usable, policy, failures or {}, cache_tokens_needed)
    starts, ends = rows["start"], rows["end"]
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
        raise SwarmNotCovering(model, num_blocks, uncovered_blocks(usable, num_blocks, start, end), what)
    hops, e = [], end
    while e != start:
        i, s = back[e]
        hops.append(Hop(usable[i], s, e, float(fixed[i] + (e - s) * per_block[i])))
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
    """Ask each URL what it serves; return the answers and the errors of those that failed."""
    infos, errors = [], {}
    for url in urls:
        try:
            span = RemoteSpan(url, timeout=timeout)
            try:
                infos.append(span.info())
            finally:
                span.close()
        except RemoteError as exc:
            errors[url] = str(exc)
    return infos, errors
