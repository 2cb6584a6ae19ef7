"""#18 spec item 6: ``/api/v1/models/<model>/spans/`` lists the nodes the DHT knows beside the tracker's.

A real bootstrap peer (``swarmnode dht serve``), a real DHT peer in this process storing signed node records, and
the portal's own DHT client (the health map's reader) reading them.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from portal.swarm.dht_reader import DHTReader, _Holder
from portal.swarm.models import Node
from swarmnode.discovery import PeerInfo
from swarmnode.testing.polling import wait_until
from swarmnode.trust.identity import NodeIdentity
from tests.swarmnode.dht.conftest import smollm2_peer, start_dht_peer

pytest.importorskip("hivemind")
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SPANS = "/api/v1/models/smollm2/spans/"


@pytest.fixture
def boot(tmp_path):
    """A fresh DHT (one per test: records outlive a test): a bootstrap peer, and a full peer in this process that
    the test's nodes announce through."""
    from swarmnode.dht import open_dht

    peer = start_dht_peer(tmp_path / "bootstrap.log")
    dht = open_dht(peer.addrs)
    yield peer, dht
    dht.close()
    peer.stop()


@pytest.fixture
def announce(boot):
    """``announce(start, end, url) -> identity``: a node of its own key, announced only in the DHT."""
    from swarmnode.dht import signed

    def _announce(start: int, end: int, url: str, identity: NodeIdentity | None = None) -> NodeIdentity:
        identity = identity or NodeIdentity.generate()
        peer = smollm2_peer(
            identity,
            start,
            end,
            url,
            throughput=20.0,
            max_session_length=2048,
            backend="torch",
            version="0.1.0",
            device="cpu",
        )
        assert boot[1].announce(signed(peer, identity, 120.0)) == end - start
        return identity

    return _announce


@pytest.fixture
def portal_reads_dht(boot, settings, tmp_path, monkeypatch, smollm2):
    """The portal's DHT client joined through the bootstrap peer, reading every half second."""
    settings.SWARM_DHT_BOOTSTRAP, settings.VAR_DIR = boot[0].addrs, tmp_path
    reader = DHTReader(boot[0].addrs, interval=0.5)
    monkeypatch.setattr(_Holder, "reader", reader)
    yield reader
    reader.close()


def spans() -> list[dict]:
    return APIClient().get(SPANS).json()["spans"]


def test_it_lists_a_node_announced_only_in_the_dht(portal_reads_dht, announce, owner_token, register, heartbeat):
    tracked = register(owner_token, start_block=0, end_block=10).json()["id"]
    heartbeat(owner_token, tracked)
    announce(10, 30, "ws://203.0.113.20:7000/layerswarm/v1")
    listed = wait_until(lambda: len(spans()) == 2 and spans(), 30, "the DHT node in the span list")
    assert [(s["id"], s["start_block"], s["end_block"]) for s in listed] == [(tracked, 0, 10), (None, 10, 30)]
    dht_only = listed[1]
    assert dht_only["url"] == "ws://203.0.113.20:7000/layerswarm/v1" and dht_only["source"] == "dht"
    assert dht_only["public_key"].startswith("ed25519:") and dht_only["reputation"] is None
    # What clients read: the merged list parses into routable peers, covering the model.
    peers = [PeerInfo.from_tracker(s) for s in listed]
    assert [(p.start_block, p.end_block) for p in peers] == [(0, 10), (10, 30)]


def test_it_lists_no_private_address_from_the_dht_unless_allowed(portal_reads_dht, announce, settings):
    announce(0, 30, "ws://10.1.2.3:7000/layerswarm/v1")  # a LAN admin port: clients would dial it
    wait_until(lambda: portal_reads_dht.peers("smollm2"), 30, "the reader to see the record")
    settings.ALLOW_PRIVATE_PEERS = False
    assert spans() == []
    settings.ALLOW_PRIVATE_PEERS = True  # a LAN swarm, a local run
    assert [s["url"] for s in spans()] == ["ws://10.1.2.3:7000/layerswarm/v1"]


def test_a_node_the_tracker_lists_or_banned_stays_listed_once_or_not_at_all(
    portal_reads_dht, announce, owner_token, other_token, register, heartbeat
):
    online = register(owner_token, start_block=0, end_block=10, url="ws://203.0.113.30:7000/layerswarm/v1")
    heartbeat(owner_token, online.json()["id"])
    announce(0, 10, "ws://203.0.113.30:7000/layerswarm/v1")  # also in the DHT: listed once, by the tracker
    banned_key = NodeIdentity.generate()
    banned = register(other_token, start_block=10, end_block=20, url="ws://203.0.113.31:7000/layerswarm/v1")
    Node.objects.filter(pk=banned.json()["id"]).update(public_key=banned_key.public_key, banned=True)
    announce(10, 20, "ws://203.0.113.32:7000/layerswarm/v1", identity=banned_key)  # banned key, new address
    announce(20, 30, "ws://203.0.113.33:7000/layerswarm/v1")  # a stranger: listed
    wait_until(lambda: any(s["start_block"] == 20 for s in spans()), 30, "the DHT node in the span list")
    assert portal_reads_dht.peers("smollm2")  # the reader saw the other records too
    assert {p.url for p in portal_reads_dht.peers("smollm2")} >= {
        "ws://203.0.113.30:7000/layerswarm/v1",
        "ws://203.0.113.32:7000/layerswarm/v1",
    }
    assert [(s["url"], s["source"] if s["id"] is None else "tracker") for s in spans()] == [
        ("ws://203.0.113.30:7000/layerswarm/v1", "tracker"),
        ("ws://203.0.113.33:7000/layerswarm/v1", "dht"),
    ]
