"""What an attacker may send the heartbeat endpoint: another node's id, a flood from one token, bodies that are
huge, deep or not JSON. Each is refused cheaply with a 4xx, writes nothing, and the real node carries on."""

import pytest

from portal.swarm import tracker
from portal.swarm.models import Heartbeat, Node


@pytest.fixture
def node_id(owner_token, register, heartbeat, settings) -> int:
    """The owner's node, online after one heartbeat that reported 1000 cache tokens."""
    settings.SWARM_HEARTBEAT_HISTORY_EVERY = 0  # keep every accepted heartbeat in the history
    node_id = register(owner_token).json()["id"]
    assert heartbeat(owner_token, node_id, cache_tokens_left=1000).status_code == 200
    return node_id


def _snapshot(node_id: int) -> tuple:
    tracker.flush_heartbeats()  # with Redis, accepted heartbeats are buffered (write-behind): count them too
    node = Node.objects.get(pk=node_id)
    return node.state, node.last_seen_at, node.cache_tokens_left, Heartbeat.objects.filter(node_id=node_id).count()


def test_a_heartbeat_naming_another_accounts_node_changes_nothing(node_id, other_token, heartbeat):
    before = _snapshot(node_id)
    response = heartbeat(other_token, node_id, cache_tokens_left=1)
    assert response.status_code == 404 and response.json()["error"] == "no_such_node"
    assert _snapshot(node_id) == before


def test_a_flood_of_heartbeats_from_one_token_is_cut_off_with_429(
    node_id, owner_token, other_token, register, heartbeat, settings
):
    settings.API_THROTTLE_RATES = {**settings.API_THROTTLE_RATES, "user": "5/min"}
    # The registration and first heartbeat (the fixture) count too: 3 more make 5 requests this minute.
    assert [heartbeat(owner_token, node_id, cache_tokens_left=n).status_code for n in range(3)] == [200] * 3
    before = _snapshot(node_id)
    refused = heartbeat(owner_token, node_id, cache_tokens_left=99)  # the 6th request of the minute
    assert refused.status_code == 429
    assert 0 < float(refused["Retry-After"]) <= 60
    assert _snapshot(node_id) == before  # refused before the tracker ran
    # Another account's node is not slowed down by it.
    theirs = register(other_token, url="ws://h:9/b").json()["id"]
    assert heartbeat(other_token, theirs).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"cache_tokens_left": ' + b"[" * 8000 + b"]" * 8000 + b"}",  # under the size limit, too deep to parse
        b'{"cache_tokens_left": 1' + b" " * 20_000 + b"}",  # over API_MAX_JSON_BYTES
        b'{"cache_tokens_left": 1e999}',
        b'{"cache_tokens_left": 99999999999999999999999}',
        b'{"throughput": NaN}',
        b"\xff\xfe\x00garbage",
    ],
    ids=["deep", "huge", "infinite", "overflow", "nan", "not-utf8"],
)
def test_it_refuses_a_garbage_heartbeat_and_writes_nothing(node_id, owner_token, node_client, heartbeat, body):
    before = _snapshot(node_id)
    url = f"/api/v1/nodes/{node_id}/heartbeat/"
    response = node_client(owner_token).generic("POST", url, body, content_type="application/json")
    assert response.status_code in (400, 413), response.content[:200]
    assert _snapshot(node_id) == before
    assert heartbeat(owner_token, node_id, cache_tokens_left=7).status_code == 200  # the node carries on
    tracker.flush_heartbeats()
    assert Node.objects.get(pk=node_id).cache_tokens_left == 7
