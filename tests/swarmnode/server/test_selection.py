"""Span selection and rebalancing on hand-built swarm states (pure functions, no network)."""

import random

import numpy as np
import pytest

from swarmnode.server.selection import (
    Placement,
    block_throughput,
    bottleneck,
    choose_span,
    ideal_bottleneck,
    placement_from_span,
    rebalance,
)


def test_it_sums_throughput_per_block():
    tput = block_throughput([Placement(0, 10, 100.0), Placement(5, 10, 50.0)], 12)
    assert tput[:5].tolist() == [10.0] * 5
    assert tput[5:10].tolist() == [20.0] * 5
    assert tput[10:].tolist() == [0.0, 0.0]


def test_it_converts_announced_tokens_per_second_to_a_rate():
    assert placement_from_span(10, 20, 8.0).rate == 80.0
    assert placement_from_span(10, 20, 0.0, default_rate=3.0).rate == 3.0


def test_it_fills_the_uncovered_span():
    swarm = [Placement(0, 10, 100.0), Placement(20, 30, 100.0)]
    assert choose_span(block_throughput(swarm, 30), 10, 100.0) == (10, 20)


def test_it_fills_a_gap_even_when_it_could_serve_more():
    swarm = [Placement(0, 12, 120.0), Placement(18, 30, 120.0)]
    start, end = choose_span(block_throughput(swarm, 30), 10, 100.0)
    assert start <= 12 and end >= 18


def test_it_joins_the_weakest_replica():
    swarm = [Placement(0, 10, 300.0), Placement(10, 20, 100.0), Placement(20, 30, 300.0)]
    assert choose_span(block_throughput(swarm, 30), 10, 100.0) == (10, 20)


def test_it_spreads_simultaneous_joiners_over_equal_gaps():
    swarm = [Placement(5, 10, 50.0), Placement(15, 20, 50.0), Placement(25, 30, 50.0)]
    tput = block_throughput(swarm, 30)
    picks = {choose_span(tput, 5, 50.0, random.Random(seed)) for seed in range(40)}
    assert picks == {(0, 5), (10, 15), (20, 25)}


def test_it_takes_the_whole_model_when_it_fits():
    assert choose_span(np.zeros(30), 40, 10.0) == (0, 30)


def test_it_measures_the_ideal_bound():
    swarm = [Placement(0, 30, 300.0), Placement(0, 15, 150.0)]
    assert ideal_bottleneck(swarm, 30) == 15.0
    assert bottleneck(swarm, 30) == 10.0


def test_it_moves_to_raise_the_bottleneck_by_a_clear_margin():
    crowded = [Placement(0, 10, 100.0), Placement(0, 10, 100.0), Placement(10, 20, 100.0), Placement(20, 30, 100.0)]
    me = Placement(0, 10, 100.0)
    decision = rebalance(crowded[1:], me, 30, 10, margin=0.2)
    assert not decision.move  # 20:30 stays the bottleneck wherever this node goes
    extra = [Placement(0, 10, 100.0), Placement(0, 10, 100.0), Placement(10, 20, 100.0), Placement(20, 30, 30.0)]
    decision = rebalance(extra, Placement(0, 10, 100.0), 30, 10, margin=0.2)
    assert decision.move and (decision.start, decision.end) == (20, 30)
    assert decision.proposed > decision.current


def test_it_never_leaves_a_block_it_alone_serves():
    others = [Placement(10, 20, 10.0), Placement(20, 30, 10.0)]
    decision = rebalance(others, Placement(0, 10, 1000.0), 30, 10, margin=0.0)
    assert not decision.move and "sole" in decision.reason


def test_it_stays_when_the_gain_is_small():
    others = [Placement(0, 10, 100.0), Placement(10, 20, 100.0), Placement(20, 30, 95.0)]
    decision = rebalance(others, Placement(0, 10, 100.0), 30, 10, margin=0.2)
    assert not decision.move


@pytest.mark.parametrize("seed", range(5))
def test_it_never_lowers_the_bottleneck_when_joining(seed):
    rng = random.Random(seed)
    swarm = [
        Placement(s, s + rng.randint(1, 10), rng.uniform(1, 100)) for s in (rng.randrange(0, 20) for _ in range(8))
    ]
    before = bottleneck(swarm, 30)
    start, end = choose_span(block_throughput(swarm, 30), 8, 50.0, rng)
    assert bottleneck([*swarm, Placement(start, end, 50.0)], 30) >= before
