"""Chains of spans on hand-built swarm states (no network)."""

import pytest

from swarmnode.client import PeerInfo, SwarmNotCovering, find_chain
from swarmnode.client.routing import PeerIndex, RoutingPolicy, route


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


# -- costs: RTT, throughput, penalties, partial spans -------------------------------------------------------------


def fast(url, start, end, tps=100.0, prefill=0.0, **kw):
    return PeerInfo(url, "m", start, end, 30, 576, "float32", 1000, 8192, tps, prefill, **kw)


def test_it_prefers_a_low_latency_chain_over_fewer_hops():
    peers = [fast("near-a", 0, 10), fast("near-b", 10, 20), fast("near-c", 20, 30), fast("far", 0, 30, tps=50.0)]
    rtts = {"near-a": 0.01, "near-b": 0.01, "near-c": 0.01, "far": 0.3}
    assert [h.url for h in route(peers, 30, model="m", rtts=rtts)] == ["near-a", "near-b", "near-c"]
    rtts["far"] = 0.02
    assert [h.url for h in route(peers, 30, model="m", rtts=rtts)] == ["far"]


def test_it_prefers_fast_nodes_in_latency_mode():
    peers = [fast("slow", 0, 30, tps=2.0), fast("quick", 0, 30, tps=50.0)]
    rtts = {"slow": 0.01, "quick": 0.05}
    assert [h.url for h in route(peers, 30, rtts=rtts)] == ["quick"]


def test_it_weighs_prefill_speed_in_throughput_mode():
    peers = [fast("low-rtt", 0, 30, tps=40.0, prefill=200.0), fast("big-gpu", 0, 30, tps=30.0, prefill=5000.0)]
    rtts = {"low-rtt": 0.005, "big-gpu": 0.08}
    assert route(peers, 30, rtts=rtts)[0].url == "low-rtt"
    assert route(peers, 30, rtts=rtts, policy=RoutingPolicy(mode="throughput", tokens=2048))[0].url == "big-gpu"


def test_it_routes_only_a_block_range_for_failover():
    peers = [fast("a", 0, 10), fast("b", 10, 20), fast("b2", 10, 20), fast("c", 20, 30)]
    hops = route(peers, 30, start=10, end=20, exclude={"b"})
    assert [(h.url, h.start, h.end) for h in hops] == [("b2", 10, 20)]


def test_it_names_the_blocks_of_a_range_nobody_serves():
    with pytest.raises(SwarmNotCovering) as info:
        route([fast("a", 0, 10), fast("c", 20, 30)], 30, start=10, end=20)
    assert info.value.uncovered == list(range(10, 20))
    assert "10-19" in str(info.value)


def test_it_starts_inside_a_span_when_partial_spans_are_allowed():
    peers = [fast("a", 0, 12), fast("b", 10, 30)]
    with pytest.raises(SwarmNotCovering):
        route(peers, 30)
    hops = route(peers, 30, policy=RoutingPolicy(allow_partial=True))
    assert [(h.url, h.start, h.end) for h in hops] == [("a", 0, 12), ("b", 12, 30)]


def test_it_penalizes_recent_failures_relays_and_full_caches():
    base = [fast("x", 0, 30), fast("y", 0, 30)]
    rtts = {"x": 0.01, "y": 0.02}
    assert route(base, 30, rtts=rtts)[0].url == "x"
    assert route(base, 30, rtts=rtts, failures={"x": 1})[0].url == "y"
    relayed = [fast("x", 0, 30, relay=True), fast("y", 0, 30)]
    assert route(relayed, 30, rtts={"y": 0.07})[0].url == "y"  # x never pinged: default RTT + relay penalty
    full = [PeerInfo("x", "m", 0, 30, 30, 576, "float32", 10, 8192, 100.0), fast("y", 0, 30)]
    assert route(full, 30, rtts=rtts, cache_tokens_needed=500)[0].url == "y"


def test_it_skips_draining_nodes():
    peers = [fast("x", 0, 30, state="draining"), fast("y", 0, 30)]
    assert route(peers, 30)[0].url == "y"


def test_it_routes_the_same_over_a_prebuilt_index():
    peers = [fast(f"n{i}", s, e, tps=10.0 + i) for i, (s, e) in enumerate([(0, 10), (10, 30), (0, 20), (20, 30)] * 5)]
    rtts = {p.url: 0.01 * (i % 7 + 1) for i, p in enumerate(peers)}
    assert route(PeerIndex(peers), 30, rtts=rtts) == route(peers, 30, rtts=rtts)


def test_it_refuses_an_empty_range():
    with pytest.raises(ValueError):
        route([fast("a", 0, 30)], 30, start=10, end=10)
