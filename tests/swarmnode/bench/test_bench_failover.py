"""The failover benchmark's stall arithmetic: which gap between tokens a kill caused, and the summary figures."""

import pytest

from swarmnode.bench.failover import failure_gap, percentile, summarize_stalls


def test_it_takes_the_longest_gap_after_the_kill():
    stamps = [0.0, 0.1, 0.2, 0.3, 1.3, 1.4]  # the kill at 0.25 stalled the token after 0.3
    assert failure_gap(stamps, 0.25) == pytest.approx(1.0)


def test_it_counts_the_gap_that_spans_the_kill():
    stamps = [0.0, 0.1, 0.9, 1.0]
    assert failure_gap(stamps, 0.15) == pytest.approx(0.8)


def test_it_ignores_slow_gaps_before_the_kill():
    stamps = [0.0, 2.0, 2.1, 2.2, 2.3]  # a slow first token (prefill) is not the failover's
    assert failure_gap(stamps, 2.15) == pytest.approx(0.1)


def test_it_has_no_gap_when_no_token_followed():
    assert failure_gap([0.0, 0.1], 0.5) is None
    assert failure_gap([], 0.5) is None


def test_it_summarizes_median_p95_and_max():
    stalls = [0.2, 0.4, 0.3, 0.5, 1.2, 0.25, 0.35, 0.45, 0.3, 0.4]
    assert summarize_stalls(stalls) == {"count": 10, "median_s": 0.375, "p95_s": 1.2, "max_s": 1.2}


def test_it_refuses_an_empty_percentile():
    with pytest.raises(ValueError):
        percentile([], 0.5)
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
