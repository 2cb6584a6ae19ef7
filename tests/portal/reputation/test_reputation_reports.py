"""#17 finding 6: a stranger's account cannot rewrite a node's reputation with forged client reports.

Reports count only from users with receipts the node countersigned, within per-reporter caps per window,
scaled by the reporter's standing (``portal/reputation/reporting.py``).
"""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from portal.accounts.models import ApiKey, EmailVerification
from portal.reputation import scoring
from portal.reputation.models import ClientReport

STEPS = "/api/v1/reputation/steps/"


def _client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiKey.create_for(user, 'reporter')[1]}")
    return client


def _aged(user, days: float) -> User:
    user.date_joined = timezone.now() - timedelta(days=days)
    user.save(update_fields=["date_joined"])
    return user


@pytest.fixture(autouse=True)
def _unthrottled(settings):
    # The attack below is many requests: this file is about what counts, not about the request rate.
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {}, "DEFAULT_THROTTLE_CLASSES": []}


def test_a_stranger_with_no_sessions_cannot_move_a_nodes_score(node, other):
    _aged(other, 365)  # even an old account: it never used this node
    before = scoring.node_score(node)
    attacker = _client(other)
    for _ in range(20):
        reply = attacker.post(STEPS, {"node": node.pk, "ok": 0, "failed": 10_000}, format="json")
        assert reply.status_code == 403 and reply.json()["error"] == "no_dealings"
        reply = attacker.post(STEPS, {"node": node.pk, "ok": 100_000, "failed": 0}, format="json")
        assert reply.status_code == 403
    reply = attacker.post(f"/api/v1/reputation/nodes/{node.pk}/report/", {"reason": "lies"}, format="json")
    assert reply.status_code == 403
    assert scoring.node_score(node) == before
    assert node.client_reports.count() == 0


def test_many_fresh_accounts_cannot_sink_a_node_either(node):
    # Sybils: each a new account with no sessions with the node.
    before = scoring.node_score(node)
    for i in range(10):
        sybil = User.objects.create_user(f"sybil{i}", f"s{i}@example.com", "pw-sybil-123456")
        reply = _client(sybil).post(f"/api/v1/reputation/nodes/{node.pk}/report/", {"reason": "bad"}, format="json")
        assert reply.status_code == 403
    assert scoring.node_score(node) == before


def test_an_owner_cannot_praise_their_own_node(node, owner, dealt):
    dealt(owner, node)
    reply = _client(owner).post(STEPS, {"node": node.pk, "ok": 1000, "failed": 0}, format="json")
    assert reply.status_code == 403 and reply.json()["error"] == "own_node"


def test_a_genuine_reporter_counts_but_only_up_to_the_caps(settings, node, other, dealt):
    _aged(other, 365)  # full weight
    dealt(other, node, sessions=2, tokens=50)  # 100 tokens of countersigned work
    client = _client(other)
    reply = client.post(STEPS, {"node": node.pk, "ok": 0, "failed": 10_000}, format="json").json()
    assert reply["counted"]["failed"] == settings.REPUTATION_REPORT_MAX_FAILED and reply["weight"] == 1.0
    after_first = scoring.node_score(node)
    assert after_first < settings.REPUTATION_PRIOR
    for _ in range(10):  # repeating it adds nothing in this window
        assert client.post(STEPS, {"node": node.pk, "ok": 0, "failed": 10_000}, format="json").json()["counted"] == {
            "ok": 0,
            "failed": 0,
            "speed": False,
        }
    assert scoring.node_score(node) == pytest.approx(after_first)
    reply = client.post(STEPS, {"node": node.pk, "ok": 100_000, "failed": 0}, format="json").json()
    assert reply["counted"]["ok"] == 100  # no more served steps than the receipts show
    negative = scoring.STEP_FAIL * settings.REPUTATION_REPORT_MAX_FAILED
    signals = node.standing.__class__.objects.get(node=node).signals["steps"]
    assert signals[1] == pytest.approx(negative, rel=1e-3) and signals[0] == pytest.approx(100 * scoring.STEP_OK, 1e-3)


def test_a_new_account_weighs_little_and_an_unverified_one_nothing(settings, node, other, dealt):
    dealt(other, node)
    reply = _client(other).post(STEPS, {"node": node.pk, "ok": 0, "failed": 4}, format="json").json()
    assert reply["weight"] == pytest.approx(0.05)  # joined just now
    stranger = User.objects.create_user("eve", "eve@example.com", "pw-eve-1234567")
    _aged(stranger, 365)
    dealt(stranger, node)
    client = _client(stranger)  # its key predates the check below (made by an admin, say)
    EmailVerification.objects.create(user=stranger)  # signed up, never confirmed the address
    before = scoring.node_score(node)
    reply = client.post(STEPS, {"node": node.pk, "ok": 0, "failed": 4}, format="json").json()
    assert reply["weight"] == 0.0 and scoring.node_score(node) == pytest.approx(before)
    assert ClientReport.objects.filter(reporter=stranger).count() == 1  # kept as evidence all the same


def test_old_receipts_do_not_count(settings, node, other, dealt):
    from portal.ledger.models import Receipt

    dealt(other, node)
    Receipt.objects.filter(client_key__user=other).update(issued_at=timezone.now() - timedelta(days=2))
    reply = _client(other).post(STEPS, {"node": node.pk, "ok": 0, "failed": 4}, format="json")
    assert reply.status_code == 403
