"""The periodic reputation tasks (Celery beat) around their domain functions."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from portal.reputation import scoring, tasks
from portal.reputation.models import ScoreSnapshot


def test_it_decays_and_records_a_history_point_per_node_each_run(node, other_node):
    assert tasks.decay_reputation() == 2
    assert tasks.decay_reputation() == 2
    assert len(scoring.score_history(node)) == 2 and len(scoring.score_history(other_node)) == 2


def test_it_prunes_history_older_than_the_retention(node):
    old = timezone.now() - timedelta(seconds=settings.REPUTATION_HISTORY + 60)
    ScoreSnapshot.objects.create(node=node, at=old, score=0.4)
    scoring.record_audit(node, passed=True)
    assert tasks.prune_score_history() == 1
    assert [round(s, 3) for _, s in scoring.score_history(node)] == [round(scoring.node_score(node), 3)]


def test_it_is_scheduled_by_celery_beat():
    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"portal.reputation.tasks.decay_reputation", "portal.reputation.tasks.prune_score_history"} <= schedule
