"""Write-behind heartbeats (portal/swarm/beats.py), as an outsider would probe them.

An online node's heartbeat is buffered in Redis and flushed in batches; bans, leaves, expiry, foreign node ids and
revoked tokens must act exactly as on the direct path. Tests marked ``write_behind`` need the Redis cache (the
PostgreSQL + Redis pass of ``make test``); the others run on both paths.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from portal.accounts.models import NodeToken
from portal.swarm import beats, tasks, tracker
from portal.swarm.models import Heartbeat, Node


@pytest.fixture
def _redis_buffer() -> None:
    if not beats.enabled():
        pytest.skip("write-behind needs the Redis cache (REDIS_URL)")


write_behind = pytest.mark.usefixtures("_redis_buffer")


@pytest.fixture
def online(owner_token, register, heartbeat) -> int:
    """The owner's node, online after one heartbeat (which, with Redis, vouched for it)."""
    node_id = register(owner_token).json()["id"]
    assert heartbeat(owner_token, node_id, cache_tokens_left=1000).status_code == 200
    return node_id


def _writes(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].lstrip().split()[0].upper() in ("UPDATE", "INSERT", "WITH")]


@write_behind
def test_it_buffers_an_online_nodes_heartbeat_and_the_flush_writes_it(online, owner_token, heartbeat):
    before = Node.objects.get(pk=online)
    with CaptureQueriesContext(connection) as queries:
        assert heartbeat(owner_token, online, cache_tokens_left=500, open_sessions=3).json()["state"] == "online"
    assert _writes(queries.captured_queries) == []  # no database write on the fast path
    assert Node.objects.get(pk=online).cache_tokens_left == 1000
    assert tracker.flush_heartbeats() == 1
    after = Node.objects.get(pk=online)
    assert (after.cache_tokens_left, after.open_sessions, after.state) == (500, 3, "online")
    assert after.last_seen_at > before.last_seen_at
    assert tracker.flush_heartbeats() == 0  # each buffered beat is written once


@write_behind
def test_the_flush_keeps_one_history_row_per_node_per_period(online, owner_token, heartbeat, settings):
    for left in (10, 20):
        heartbeat(owner_token, online, cache_tokens_left=left)
        tracker.flush_heartbeats()
    assert list(Heartbeat.objects.values_list("cache_tokens_left", flat=True)) == [1000]
    Heartbeat.objects.update(at=timezone.now() - timedelta(seconds=settings.SWARM_HEARTBEAT_HISTORY_EVERY + 1))
    heartbeat(owner_token, online, cache_tokens_left=30)
    tracker.flush_heartbeats()
    assert sorted(Heartbeat.objects.values_list("cache_tokens_left", flat=True)) == [30, 1000]


def test_a_banned_nodes_heartbeat_is_refused_at_once(online, owner_token, heartbeat):
    tracker.set_banned(Node.objects.filter(pk=online), True)
    response = heartbeat(owner_token, online)
    assert response.status_code == 403 and response.json()["error"] == "banned"


def test_a_late_flush_does_not_unban_a_node(online, owner_token, heartbeat):
    heartbeat(owner_token, online, cache_tokens_left=5)  # buffered, with Redis
    tracker.set_banned(Node.objects.filter(pk=online), True)
    seen = Node.objects.get(pk=online).last_seen_at
    tracker.flush_heartbeats()
    node = Node.objects.get(pk=online)
    assert (node.banned, node.state, node.last_seen_at) == (True, "offline", seen)
    assert heartbeat(owner_token, online).status_code == 403


def test_a_late_flush_does_not_revive_a_node_that_left(online, owner_token, node_client, heartbeat):
    heartbeat(owner_token, online, cache_tokens_left=5)
    assert node_client(owner_token).post(f"/api/v1/nodes/{online}/leave/").status_code == 200
    tracker.flush_heartbeats()
    assert Node.objects.get(pk=online).state == "offline"
    assert heartbeat(owner_token, online).status_code == 410


def test_a_late_flush_does_not_revive_an_expired_node(online, owner_token, heartbeat, settings):
    heartbeat(owner_token, online, cache_tokens_left=5)
    later = timezone.now() + timedelta(seconds=settings.SWARM_HEARTBEAT_TIMEOUT + 1)
    assert tracker.expire_stale_nodes(now=later) == 1
    heartbeat(owner_token, online)  # 410, and nothing buffered
    tracker.flush_heartbeats()
    assert Node.objects.get(pk=online).state == "offline"
    assert heartbeat(owner_token, online).status_code == 410


def test_another_accounts_node_id_is_404_and_buffers_nothing(online, other_token, heartbeat):
    response = heartbeat(other_token, online, cache_tokens_left=1)
    assert response.status_code == 404 and response.json()["error"] == "no_such_node"
    tracker.flush_heartbeats()
    assert Node.objects.get(pk=online).cache_tokens_left == 1000


def test_a_revoked_token_stops_heartbeating_at_once(online, owner_token, heartbeat):
    NodeToken.objects.get().revoke()
    assert heartbeat(owner_token, online).status_code in (401, 403)
    tracker.flush_heartbeats()
    assert Node.objects.get(pk=online).cache_tokens_left == 1000


def test_a_re_registered_node_goes_through_the_database_again(online, owner_token, register, heartbeat):
    register(owner_token)  # the same node (token, span, address): joining again
    assert Node.objects.get(pk=online).state == "joining"
    heartbeat(owner_token, online, cache_tokens_left=77)
    node = Node.objects.get(pk=online)  # no flush: the joining -> online transition is written at once
    assert (node.state, node.cache_tokens_left) == ("online", 77)


@write_behind
def test_expiry_counts_a_buffered_heartbeat(online, owner_token, heartbeat, settings):
    # Last written to the database long ago, heard from just now through the buffer only.
    Node.objects.filter(pk=online).update(last_seen_at=timezone.now() - timedelta(hours=1))
    heartbeat(owner_token, online)
    soon = timezone.now() + timedelta(seconds=1)
    assert tracker.expire_stale_nodes(now=soon) == 0
    assert Node.objects.get(pk=online).state == "online"


@write_behind
def test_a_flush_never_moves_last_seen_back(online, owner_token, heartbeat):
    heartbeat(owner_token, online, cache_tokens_left=5)
    newer = timezone.now() + timedelta(minutes=5)
    Node.objects.filter(pk=online).update(last_seen_at=newer)
    tracker.flush_heartbeats()
    node = Node.objects.get(pk=online)
    assert (node.last_seen_at, node.cache_tokens_left) == (newer, 1000)


@write_behind
def test_the_vouch_names_the_token_and_expires(online, owner_token, heartbeat, settings):
    node = Node.objects.get(pk=online)
    assert not beats.admit(node.token_id + 1, online, timezone.now(), 1, 0, None)  # another token: no fast path
    assert beats.admit(node.token_id, online, timezone.now(), 1, 0, None)
    beats.forget([online])
    assert not beats.admit(node.token_id, online, timezone.now(), 1, 0, None)


def test_the_flush_runs_as_a_celery_task(online, settings):
    assert tasks.flush_heartbeats.apply().get() == 0
    assert "flush-heartbeats" in settings.CELERY_BEAT_SCHEDULE
