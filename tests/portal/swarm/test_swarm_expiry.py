"""Nodes that stop heartbeating go offline (Celery beat task), with time moved forward."""

from datetime import timedelta

from django.utils import timezone

from portal.swarm import tasks, tracker
from portal.swarm.models import Heartbeat, Node


def test_it_keeps_a_node_online_while_it_heartbeats(owner_token, register, heartbeat, settings):
    node_id = register(owner_token).json()["id"]
    heartbeat(owner_token, node_id)
    almost = timezone.now() + timedelta(seconds=settings.SWARM_HEARTBEAT_TIMEOUT - 1)
    assert tracker.expire_stale_nodes(now=almost) == 0
    assert Node.objects.get(pk=node_id).state == "online"


def test_it_marks_a_silent_node_offline_after_the_timeout(owner_token, register, heartbeat, settings):
    node_id = register(owner_token).json()["id"]
    heartbeat(owner_token, node_id)
    later = timezone.now() + timedelta(seconds=settings.SWARM_HEARTBEAT_TIMEOUT + 1)
    assert tracker.expire_stale_nodes(now=later) == 1
    assert Node.objects.get(pk=node_id).state == "offline"
    # ... and it is no longer a span clients are offered; its heartbeat says "register again".
    assert tracker.online_spans("smollm2").count() == 0
    assert heartbeat(owner_token, node_id).status_code == 410


def test_it_expires_nodes_that_never_heartbeat(owner_token, register, settings):
    node_id = register(owner_token).json()["id"]
    later = timezone.now() + timedelta(seconds=settings.SWARM_HEARTBEAT_TIMEOUT + 1)
    tracker.expire_stale_nodes(now=later)
    assert Node.objects.get(pk=node_id).state == "offline"


def test_it_runs_expiry_as_a_celery_task(owner_token, register, heartbeat, settings):
    node_id = register(owner_token).json()["id"]
    heartbeat(owner_token, node_id)
    Node.objects.filter(pk=node_id).update(last_seen_at=timezone.now() - timedelta(hours=1))
    assert tasks.expire_stale_nodes.apply().get() == 1
    assert Node.objects.get(pk=node_id).state == "offline"
    assert "expire-stale-nodes" in settings.CELERY_BEAT_SCHEDULE


def test_it_prunes_old_heartbeats(owner_token, register, heartbeat, settings):
    node_id = register(owner_token).json()["id"]
    heartbeat(owner_token, node_id)
    Heartbeat.objects.update(at=timezone.now() - timedelta(seconds=settings.SWARM_HEARTBEAT_HISTORY + 1))
    heartbeat(owner_token, node_id)
    tracker.flush_heartbeats()  # with Redis the beat is buffered (write-behind) until a flush
    assert tasks.prune_heartbeats.apply().get() == 1
    assert Heartbeat.objects.count() == 1


def test_it_keeps_one_history_row_per_node_per_minute(owner_token, register, heartbeat, settings):
    node_id = register(owner_token).json()["id"]
    for tokens_left in (10, 20, 30):
        assert heartbeat(owner_token, node_id, cache_tokens_left=tokens_left).status_code == 200
    tracker.flush_heartbeats()  # with Redis the later beats are buffered (write-behind) until a flush
    assert list(Heartbeat.objects.values_list("cache_tokens_left", flat=True)) == [10]
    assert Node.objects.get(pk=node_id).cache_tokens_left == 30  # the node itself is always current
    Heartbeat.objects.update(at=timezone.now() - timedelta(seconds=settings.SWARM_HEARTBEAT_HISTORY_EVERY + 1))
    heartbeat(owner_token, node_id, cache_tokens_left=40)
    tracker.flush_heartbeats()
    assert sorted(Heartbeat.objects.values_list("cache_tokens_left", flat=True)) == [10, 40]
