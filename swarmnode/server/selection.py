"""Where a node should sit in the swarm: span selection and the rebalancing decision.

Pure functions over a view of the swarm (which spans are served, how fast), no I/O.

Throughput model: a node that runs ``T`` tokens/s through its ``k``-block span has a compute rate
of ``T * k`` block-tokens/s, whatever span it serves. Serving ``k`` blocks, it adds ``rate / k``
tokens/s to each of them. A block's throughput is the sum over the nodes serving it; the swarm's
**bottleneck** is the smallest block throughput. The ideal (no span boundaries, no memory limits)
is ``sum(rates) / num_blocks``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Placement:
    """One node as span selection sees it."""

    start: int
    end: int
    rate: float  # block-tokens/s: tokens/s through the span times its length

    @property
    def length(self) -> int:
        """Blocks served."""
        return self.end - self.start


def placement_from_span(start: int, end: int, throughput: float, default_rate: float = 1.0) -> Placement:
    """A :class:`Placement` from an announced span and its tokens/s (0: unknown, ``default_rate`` used)."""
    rate = throughput * (end - start) if throughput > 0 else default_rate
    return Placement(start, end, rate)


def block_throughput(placements: Iterable[Placement], num_blocks: int) -> np.ndarray:  # (L,)
    """Tokens/s each block can serve: the sum of ``rate / length`` of the nodes covering it."""
    diff = np.zeros(num_blocks + 1)
    for p in placements:
        diff[p.start] += p.rate / p.length
        diff[p.end] -= p.rate / p.length
    return np.cumsum(diff)[:num_blocks]


def bottleneck(placements: Iterable[Placement], num_blocks: int) -> float:
    """The swarm's throughput: its slowest block's."""
    return float(block_throughput(placements, num_blocks).min())


def ideal_bottleneck(placements: Iterable[Placement], num_blocks: int) -> float:
    """Upper bound on the bottleneck: all compute spread evenly over every block."""
    return sum(p.rate for p in placements) / num_blocks


def _bottleneck_after_adding(tput: np.ndarray, length: int, add: float) -> np.ndarray:  # (L - length + 1,)
    """For each window start, the bottleneck once ``add`` is added to blocks ``[s, s + length)``."""
    n = tput.size
    starts = np.arange(n - length + 1)
    prefix = np.minimum.accumulate(np.concatenate([[np.inf], tput]))  # prefix[i] = min(tput[:i])
    suffix = np.minimum.accumulate(np.concatenate([tput, [np.inf]])[::-1])[::-1]  # suffix[i] = min(tput[i:])
    windows = np.lib.stride_tricks.sliding_window_view(tput, length).min(axis=1)
    return np.minimum(np.minimum(prefix[starts], suffix[starts + length]), windows + add)


def window_gain(tput: np.ndarray, length: int, add: float) -> np.ndarray:  # (L - length + 1,)
    """For each window start, how much adding ``add`` to its blocks improves the balance potential.

    The potential is ``sum(log(throughput + eps))`` over blocks: concave, so raising a weak block
    counts far more than raising a strong one, and an uncovered block counts most of all.
    """
    eps = max(1e-9, 1e-3 * add)
    gain = np.log(tput + add + eps) - np.log(tput + eps)
    return np.convolve(gain, np.ones(length), mode="valid")


def choose_span(
    tput: np.ndarray,
    capacity: int,
    rate: float,
    rng: random.Random | None = None,
    tolerance: float = 0.01,
) -> tuple[int, int]:
    """The window of ``capacity`` blocks that most raises the bottleneck when a node of ``rate`` joins.

    In a large swarm one node rarely moves the global minimum, so among windows whose bottleneck
    is within ``tolerance`` of the best, those over the weakest block win (water filling), then
    those with the best :func:`window_gain`; among windows within ``tolerance`` of that, one is
    picked at random, so simultaneous joiners spread out.

    Args:
        tput: ``(L,)`` block throughput of the swarm without this node (see :func:`block_throughput`).
        capacity: blocks that fit the node's memory (weights + KV cache); capped at ``L``.
        rate: the node's block-tokens/s.
        rng: randomness for the jitter (``None``: deterministic, the first best window).
        tolerance: relative slack that counts as a tie.

    Returns:
        ``(start, end)``.
    """
    n = tput.size
    length = max(1, min(capacity, n))
    add = rate / length
    after = _bottleneck_after_adding(tput, length, add)
    best = after.max()
    near = np.flatnonzero(after >= best - tolerance * abs(best) - 1e-12)
    # Water filling: among those, the windows over the weakest block (the next bottleneck) ...
    weakest = np.lib.stride_tricks.sliding_window_view(tput, length).min(axis=1)[near]
    low = weakest.min()
    near = near[weakest <= low + tolerance * max(abs(low), add) + 1e-12]
    # ... then the best balance gain.
    gains = window_gain(tput, length, add)[near]
    top = gains.max()
    near = near[gains >= top - tolerance * abs(top) - 1e-12]
    start = int(near[0] if rng is None else rng.choice(list(near)))
    return start, start + length


@dataclass(frozen=True)
class MoveDecision:
    """What rebalancing concluded."""

    move: bool
    start: int
    end: int
    current: float  # bottleneck with the node where it is
    proposed: float  # bottleneck with the node at (start, end)
    reason: str


def rebalance(
    others: list[Placement],
    me: Placement,
    num_blocks: int,
    capacity: int,
    margin: float = 0.2,
    rng: random.Random | None = None,
) -> MoveDecision:
    """Whether moving ``me`` would raise the bottleneck by more than ``margin`` (relative).

    A node never moves away from a block that it alone serves: leaving it would break every chain.

    Args:
        others: every other node of the swarm.
        me: this node where it is now.
        num_blocks: blocks of the model.
        capacity: blocks this node could serve.
        margin: required relative gain (0.2: the bottleneck must rise by 20 %).
        rng: jitter for :func:`choose_span`.
    """
    return rebalance_tput(block_throughput(others, num_blocks), me, capacity, margin, rng)


def rebalance_tput(
    without: np.ndarray,
    me: Placement,
    capacity: int,
    margin: float = 0.2,
    rng: random.Random | None = None,
) -> MoveDecision:
    """:func:`rebalance` on the block throughput of the swarm without this node, ``(L,)``.

    A move pays off when it raises the bottleneck by ``margin``, or, when the bottleneck would not
    fall, when the node adds ``margin`` more balance potential (:func:`window_gain`) at the new
    place than where it is: how a single node in a large swarm still drifts to the weak spots.
    """
    add = me.rate / me.length
    with_me = without.copy()
    with_me[me.start : me.end] += add
    current = float(with_me.min())
    if np.any(without[me.start : me.end] <= 0):
        return MoveDecision(False, me.start, me.end, current, current, "sole server of some of its blocks")
    start, end = choose_span(without, capacity, me.rate, rng)
    if (start, end) == (me.start, me.end):
        return MoveDecision(False, start, end, current, current, "already in the best place")
    moved = without.copy()
    moved[start:end] += me.rate / (end - start)
    proposed = float(moved.min())
    here = float(window_gain(without[me.start : me.end], me.length, add)[0])
    there = float(window_gain(without[start:end], end - start, me.rate / (end - start))[0])
    if proposed > current * (1 + margin) and proposed > current:
        return MoveDecision(True, start, end, current, proposed, f"bottleneck {current:.3g} -> {proposed:.3g}")
    if proposed >= current and there > here * (1 + margin):
        return MoveDecision(True, start, end, current, proposed, f"balance gain {here:.3g} -> {there:.3g}")
    return MoveDecision(False, me.start, me.end, current, proposed, f"gain below the {margin:.0%} margin")
