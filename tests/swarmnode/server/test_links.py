"""Link probes: RTT and bandwidth to a real node (padding rides in a field nodes ignore, spec §2.4)."""

import asyncio

import pytest

from swarmnode.discovery import PeerInfo
from swarmnode.server.links import neighbours, probe_node
from swarmnode.testing.delay_proxy import DelayProxy, LinkShape
from swarmnode.testing.wan import node_port


def test_it_measures_rtt_and_bandwidth_to_a_node(tiny_node):
    with DelayProxy(node_port(tiny_node.url), LinkShape(one_way_delay_s=0.02, bandwidth_bytes_per_s=2e6)) as proxy:
        quality = asyncio.run(probe_node(proxy.url_for(tiny_node.url), payload_bytes=200_000))
    assert quality.rtt_s >= 0.04
    assert 0 < quality.bandwidth_bytes_per_s <= 2.5e6  # the cap, give or take the estimate


def test_it_fails_clearly_for_a_dead_node():
    with pytest.raises(OSError):
        asyncio.run(probe_node("ws://127.0.0.1:9/layerswarm/v1", timeout=2.0))


def test_it_picks_the_neighbours_a_chain_hands_activations_to():
    def peer(url, s, e):
        return PeerInfo(url, "m", s, e, 30, 64, "float32", 1, 1)

    view = [peer("before", 0, 10), peer("after", 20, 30), peer("same", 10, 20), peer("far", 0, 5)]
    assert neighbours(view, 10, 20) == ["before", "after"]
