"""The health map's data: which blocks are covered, and a clear banner when some are not."""

from datetime import timedelta

from django.utils import timezone

from portal.swarm.health import describe_ranges, swarm_health
from portal.swarm.models import Node


def _online(token, register, heartbeat, start, end, port):
    node_id = register(token, start_block=start, end_block=end, url=f"ws://127.0.0.1:{port}/layerswarm/v1").json()["id"]
    heartbeat(token, node_id)
    return node_id


def test_it_reports_every_block_uncovered_for_an_empty_swarm(smollm2, anon_client):
    health = anon_client.get("/api/v1/swarm/health/").json()
    model = health["models"][0]
    assert (model["model"], model["num_blocks"], model["covered"]) == ("smollm2", 30, False)
    assert model["uncovered_blocks"] == list(range(30))
    assert model["banner"] == "broken: blocks 0-29 uncovered"


def test_it_names_the_uncovered_range(owner_token, other_token, register, heartbeat, anon_client):
    _online(owner_token, register, heartbeat, 0, 12, 1)
    _online(other_token, register, heartbeat, 18, 30, 2)
    model = anon_client.get("/api/v1/swarm/health/").json()["models"][0]
    assert model["uncovered_blocks"] == [12, 13, 14, 15, 16, 17]
    assert model["banner"] == "broken: blocks 12-17 uncovered"
    assert {n["owner"] for n in model["nodes"]} == {"alice", "bob"}
    node = model["nodes"][0]
    assert {"state", "throughput", "connection", "start_block", "end_block"} <= set(node)


def test_it_reports_full_coverage(owner_token, register, heartbeat, anon_client):
    for i, (start, end) in enumerate([(0, 10), (10, 20), (20, 30)]):
        _online(owner_token, register, heartbeat, start, end, 10 + i)
    model = anon_client.get("/api/v1/swarm/health/").json()["models"][0]
    assert model["covered"] is True and model["uncovered_blocks"] == [] and model["banner"] == ""
    assert model["online_nodes"] == 3


def test_it_does_not_count_joining_or_offline_nodes_as_coverage(owner_token, register, heartbeat, smollm2):
    register(owner_token, start_block=0, end_block=30)  # joining
    health = swarm_health()["models"][0]
    assert health["covered"] is False and health["nodes"][0]["state"] == "joining"
    Node.objects.update(state="offline")
    assert swarm_health()["models"][0]["nodes"][0]["state"] == "offline"
    # Long-gone nodes drop off the map.
    Node.objects.update(last_seen_at=timezone.now() - timedelta(days=1))
    assert swarm_health()["models"][0]["nodes"] == []


def test_it_describes_block_ranges():
    assert describe_ranges([12, 13, 14, 15, 16, 17]) == "12-17"
    assert describe_ranges([0, 2, 3, 29]) == "0, 2-3, 29"
    assert describe_ranges([]) == ""
