"""Scoring: prior, evidence, decay, threshold, auto-suspension (portal/README.md, "Reputation")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.reputation import scoring
from portal.reputation.models import AuditEvidence, NodeStanding
from portal.swarm.models import Node


def test_it_gives_a_new_node_the_prior(node, settings):
    assert scoring.node_score(node) == pytest.approx(settings.REPUTATION_PRIOR)
    assert scoring.score_history(node) == []


def test_it_raises_the_score_on_passed_audits_and_drops_it_under_the_threshold_on_a_failure(node, settings):
    for _ in range(5):
        scoring.record_audit(node, passed=True)
    good = scoring.node_score(node)
    assert settings.REPUTATION_PRIOR < good < 1.0
    scoring.record_audit(node, passed=False, relative_error=3.0, tolerance=1e-3)
    assert scoring.node_score(node) < settings.REPUTATION_THRESHOLD
    history = scoring.score_history(node)
    assert [round(s, 6) for _, s in history][-1] == round(scoring.node_score(node), 6)
    assert history[-1][1] < history[-2][1]


def test_it_keeps_scores_in_the_unit_interval_under_any_evidence(node):
    for _ in range(50):
        scoring.record_signal(node, "steps", positive=1000.0)
    assert 0.0 <= scoring.node_score(node) <= 1.0
    for _ in range(50):
        scoring.record_signal(node, "reports", negative=1000.0)
    assert 0.0 <= scoring.node_score(node) <= 1.0


def test_it_decays_evidence_back_towards_the_prior(node, settings):
    now = timezone.now()
    scoring.record_audit(node, passed=False, now=now)
    low = scoring.node_score(node, now=now)
    later = scoring.node_score(node, now=now + timedelta(seconds=10 * settings.REPUTATION_HALF_LIFE))
    assert low < later == pytest.approx(settings.REPUTATION_PRIOR, abs=0.01)


def test_it_records_a_history_point_per_decay_run_and_credits_uptime(node, make_node, owner, settings):
    offline = make_node(owner, start=10, end=20, port=41009, state=Node.State.OFFLINE)
    now = timezone.now()
    scoring.decay_all(now=now)
    assert scoring.decay_all(now=now + timedelta(hours=4)) == 1  # the offline node has no standing yet
    assert scoring.node_score(node, now=now + timedelta(hours=4)) > settings.REPUTATION_PRIOR
    assert len(scoring.score_history(node)) == 2
    assert scoring.score_history(offline) == []


def test_it_penalises_a_node_that_claims_far_more_speed_than_clients_measure(node, other_node):
    scoring.record_steps(node, ok=0, failed=0, measured_throughput=node.throughput / 10)
    scoring.record_steps(other_node, ok=0, failed=0, measured_throughput=other_node.throughput * 0.9)
    assert scoring.node_score(node) < scoring.node_score(other_node)


def test_it_counts_one_user_report_per_user_node_and_day(node, other):
    assert scoring.record_user_report(node, other, "gibberish") is not None
    assert scoring.record_user_report(node, other, "gibberish again") is None
    assert AuditEvidence.objects.filter(node=node, kind="report").count() == 1


def test_it_suspends_after_repeated_failures_until_an_admin_reviews(node, other_node, settings, admin_user):
    settings.REPUTATION_SUSPEND_FAILURES = 3
    for _ in range(30):
        scoring.record_audit(node, passed=True)
    for i in range(3):
        assert not NodeStanding.objects.get(node=node).suspended, i
        scoring.record_audit(node, passed=False)
    standing = NodeStanding.objects.get(node=node)
    assert standing.suspended and standing.review == NodeStanding.Review.PENDING
    assert scoring.node_score(node) == 0.0
    assert list(scoring.trusted(Node.objects.all())) == [other_node]

    scoring.lift_suspension(standing, admin_user)
    assert scoring.node_score(node) > 0.0
    assert node in scoring.trusted(Node.objects.all())  # 30 passes outweigh 3 failures: 0.34
    scoring.record_audit(node, passed=False)  # failures before the review no longer count
    assert not NodeStanding.objects.get(node=node).suspended

    scoring.uphold_suspension(NodeStanding.objects.get(node=node), admin_user)
    node.refresh_from_db()
    assert node.banned and NodeStanding.objects.get(node=node).suspended


def test_it_leaves_low_scores_out_of_the_trusted_nodes(node, other_node):
    scoring.record_audit(node, passed=False)
    assert list(scoring.trusted(Node.objects.all())) == [other_node]
