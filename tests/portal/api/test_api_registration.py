"""Nodes register their span with a node token and heartbeat; the tracker keeps their state."""

from portal.swarm.models import Heartbeat, Node


def test_it_registers_a_node_as_joining(owner, owner_token, register):
    response = register(owner_token)
    assert response.status_code == 201
    node = Node.objects.get(pk=response.json()["id"])
    assert node.owner == owner
    assert (node.start_block, node.end_block, node.state) == (0, 10, "joining")
    assert response.json()["heartbeat_interval"] > 0


def test_it_turns_a_node_online_on_its_first_heartbeat(owner_token, register, heartbeat):
    node_id = register(owner_token).json()["id"]
    response = heartbeat(owner_token, node_id, cache_tokens_left=1234, open_sessions=2, throughput=9.5)
    assert response.status_code == 200
    assert response.json()["state"] == "online"
    node = Node.objects.get(pk=node_id)
    assert (node.state, node.cache_tokens_left, node.open_sessions, node.throughput) == ("online", 1234, 2, 9.5)
    assert Heartbeat.objects.filter(node=node).count() == 1


def test_it_refreshes_the_same_node_when_it_registers_again(owner_token, register):
    first = register(owner_token).json()["id"]
    again = register(owner_token, throughput=99.0)
    assert again.status_code == 200
    assert again.json()["id"] == first
    assert Node.objects.count() == 1
    assert Node.objects.get().throughput == 99.0


def test_it_lets_one_machine_serve_disjoint_spans(owner_token, register):
    assert register(owner_token, start_block=0, end_block=10).status_code == 201
    second = register(owner_token, start_block=10, end_block=20, url="ws://127.0.0.1:40002/layerswarm/v1")
    assert second.status_code == 201
    assert Node.objects.count() == 2


def test_it_accepts_relayed_nodes_without_url(owner_token, register):
    response = register(owner_token, url="", relay=True)
    assert response.status_code == 201
    assert Node.objects.get().connection == "relay"


def test_it_marks_a_leaving_node_offline(owner_token, register, node_client):
    node_id = register(owner_token).json()["id"]
    response = node_client(owner_token).post(f"/api/v1/nodes/{node_id}/leave/")
    assert response.status_code == 200
    assert Node.objects.get(pk=node_id).state == "offline"


def test_it_asks_an_expired_node_to_register_again(owner_token, register, heartbeat):
    node_id = register(owner_token).json()["id"]
    Node.objects.filter(pk=node_id).update(state="offline")
    response = heartbeat(owner_token, node_id)
    assert response.status_code == 410
    assert response.json()["error"] == "offline"
    # Registering again brings the same node back.
    again = register(owner_token)
    assert again.status_code == 200 and again.json()["id"] == node_id
    assert Node.objects.get(pk=node_id).state == "joining"
