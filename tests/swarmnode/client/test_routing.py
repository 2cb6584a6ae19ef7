"""Chains of spans on hand-built swarm states (no network)."""

import pytest

from swarmnode.client import PeerInfo, SwarmNotCovering, find_chain


def peer(url, start, end, model="m"):
    return PeerInfo(url, model, start, end, 30, 576, "float32", 1000, 8192)


def test_it_chains_spans_in_block_order():
    peers = [peer("c", 20, 30), peer("a", 0, 10), peer("b", 10, 20)]
    assert [p.url for p in find_chain(peers, 30, "m")] == ["a", "b", "c"]


def test_it_prefers_fewer_hops():
    peers = [peer("a", 0, 10), peer("b", 10, 20), peer("c", 20, 30), peer("big", 10, 30)]
    assert [p.url for p in find_chain(peers, 30, "m")] == ["a", "big"]


def test_it_skips_excluded_peers_and_other_models():
    peers = [peer("a", 0, 30, model="other"), peer("b", 0, 15), peer("b2", 0, 15), peer("c", 15, 30)]
    assert [p.url for p in find_chain(peers, 30, "m", exclude={"b"})] == ["b2", "c"]


def test_it_names_the_uncovered_blocks():
    with pytest.raises(SwarmNotCovering) as info:
        find_chain([peer("a", 0, 10), peer("c", 18, 30)], 30, "m")
    assert info.value.uncovered == list(range(10, 18))
    assert "10-17" in str(info.value)


def test_it_explains_spans_that_do_not_line_up():
    with pytest.raises(SwarmNotCovering, match="line up"):
        find_chain([peer("a", 0, 12), peer("b", 10, 30)], 30, "m")
