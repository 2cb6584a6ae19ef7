"""Relayed hops (spec §9) are priced by the extra latency measured through their relay."""

from swarmnode.client.routing import RoutingPolicy, route
from swarmnode.discovery import PeerInfo


def node(url, relay=False):
    return PeerInfo(url, "m", 0, 30, 30, 576, "float32", 10_000, 8192, throughput=100.0, relay=relay)


def test_it_prefers_a_direct_node_by_exactly_the_relays_measured_extra_latency():
    peers = [node("relayed", relay=True), node("direct")]
    assert route(peers, 30, rtts={"relayed": 0.012, "direct": 0.010})[0].url == "direct"
    # A relayed node whose measured RTT (relay included) is lower still wins: no blanket penalty.
    assert route(peers, 30, rtts={"relayed": 0.012, "direct": 0.030})[0].url == "relayed"


def test_it_assumes_the_relay_penalty_until_the_relayed_node_is_measured():
    peers = [node("relayed", relay=True), node("direct")]
    policy = RoutingPolicy(relay_penalty_s=0.1)
    hops = route(peers, 30, rtts={"direct": 0.12}, policy=policy)
    assert hops[0].url == "direct"  # unmeasured relayed: 0.05 default + 0.1 penalty > 0.12
    costs = {h.url: h.cost_s for p in ([peers[0]], [peers[1]]) for h in route(p, 30, rtts={"direct": 0.12})}
    assert round(costs["relayed"] - costs["direct"], 6) == round(0.05 + 0.1 - 0.12, 6)
