"""Pinning without processes: what a node says of itself counts only where it matches the tracker's registration."""

from __future__ import annotations

from portal.generation.trust import TrackedNode, pin
from swarmnode.discovery import PeerInfo

URL = "ws://127.0.0.1:9001/layerswarm/v1"
KEY = "ed25519:AAAA,x25519:BBBB"


def _peer(url: str = URL, key: str = KEY, span: tuple[int, int] = (0, 3)) -> PeerInfo:
    return PeerInfo(url=url, model="gw-tiny", start_block=span[0], end_block=span[1], public_key=key)


REGISTERED = TrackedNode(URL, node_id=7, public_key=KEY, model="gw-tiny", start_block=0, end_block=3, reputation=0.8)


def test_it_keeps_the_registered_node_with_the_trackers_id_and_score():
    (peer,) = pin([_peer()], [REGISTERED])
    assert (peer.node_id, peer.public_key, peer.reputation) == (7, KEY, 0.8)


def test_it_drops_another_key_or_another_span_at_a_registered_address():
    assert pin([_peer(key="ed25519:EVIL,x25519:EVIL")], [REGISTERED]) == []
    assert pin([_peer(span=(0, 6))], [REGISTERED]) == []


def test_it_drops_nodes_at_addresses_nobody_listed_and_keeps_the_operators_static_peers():
    other = "ws://127.0.0.1:9002/layerswarm/v1"
    assert pin([_peer(other)], [REGISTERED]) == []
    (static,) = pin([_peer(other, key="ed25519:OWN,x25519:OWN")], [TrackedNode(other)])
    assert static.public_key == "ed25519:OWN,x25519:OWN" and static.node_id == 0


def test_a_changed_score_is_the_same_registration():
    """Scores move with every audit; only a changed node set makes the pool probe the swarm again."""
    assert TrackedNode(URL, 7, KEY, "gw-tiny", 0, 3, reputation=0.1) == REGISTERED
    assert TrackedNode(URL, 7, "ed25519:NEW,x25519:NEW", "gw-tiny", 0, 3) != REGISTERED
