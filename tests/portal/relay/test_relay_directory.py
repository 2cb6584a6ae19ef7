"""``GET /api/v1/relays/``: the portal's relay and the online nodes that offer to relay (spec §9.5)."""

from portal.accounts.models import NodeToken
from portal.relay.models import RelayedNode
from portal.swarm import tracker
from portal.swarm.models import Node
from portal.swarm.tracker import Beat
from swarmnode.discovery import PeerInfo


def _node(token, start, end, url, relay_capacity=0):
    reg = PeerInfo(
        model="smollm2", start_block=start, end_block=end, url=url, backend="torch", device="cpu",
        dtype="float32", version="0.1.0", relay_capacity=relay_capacity,
    )  # fmt: skip
    node, _ = tracker.register_node(token, reg)
    tracker.record_heartbeat(token, node.pk, Beat())
    return node


def test_it_lists_the_portal_relay_then_nodes_offering_capacity(owner, smollm2, anon_client, settings):
    token = NodeToken.create_for(owner, "gpu")[0]
    _node(token, 0, 10, "ws://203.0.113.5:31330/layerswarm/v1", relay_capacity=4)
    _node(token, 10, 20, "ws://203.0.113.6:31330/layerswarm/v1")  # does not relay
    RelayedNode.objects.create(key_id="k" * 24, public_key="x", token=token, channel_name="c")
    settings.ALLOWED_HOSTS = ["portal.test", "testserver"]
    reply = anon_client.get("/api/v1/relays/", HTTP_HOST="portal.test")
    assert reply.status_code == 200
    assert reply.json()["relays"] == [
        {"url": "ws://portal.test/ws/relay", "kind": "portal", "capacity": 256, "nodes": 1},
        {"url": "ws://203.0.113.5:31330/layerswarm/v1/relay", "kind": "node", "capacity": 4},
    ]
    settings.RELAY_PUBLIC_URL = "wss://relay.example/ws/relay"
    assert anon_client.get("/api/v1/relays/").json()["relays"][0]["url"] == "wss://relay.example/ws/relay"


def test_it_accepts_a_relay_capacity_at_registration(owner_token, register):
    assert register(owner_token, relay_capacity=8).status_code == 201
    assert Node.objects.get().relay_capacity == 8


def test_it_lists_no_private_address_for_every_node_to_dial_in_production(owner, smollm2, anon_client, settings):
    """#17 finding 12: a stranger's node registering 169.254.169.254 or 10.x as a relay is not listed."""
    token = NodeToken.create_for(owner, "gpu")[0]
    _node(token, 0, 5, "ws://169.254.169.254/latest", relay_capacity=4)
    _node(token, 5, 10, "ws://10.0.0.7:31330/layerswarm/v1", relay_capacity=4)
    _node(token, 10, 15, "ws://relay.example:31330/layerswarm/v1", relay_capacity=4)
    _node(token, 15, 20, "ws://8.8.4.4:31330/layerswarm/v1", relay_capacity=4)
    settings.ALLOW_PRIVATE_PEERS = False
    urls = [r["url"] for r in anon_client.get("/api/v1/relays/").json()["relays"][1:]]
    assert urls == ["ws://relay.example:31330/layerswarm/v1/relay", "ws://8.8.4.4:31330/layerswarm/v1/relay"]
    settings.ALLOW_PRIVATE_PEERS = True  # a LAN swarm
    assert len(anon_client.get("/api/v1/relays/").json()["relays"]) == 5
