"""The tracker's peer list carries each node's score and leaves out low-scored and suspended nodes."""

from __future__ import annotations

from portal.reputation import scoring
from portal.reputation.models import NodeStanding


def _spans(client) -> dict[int, dict]:
    response = client.get("/api/v1/models/smollm2/spans/")
    assert response.status_code == 200
    return {s["id"]: s for s in response.json()["spans"]}


def test_it_lists_new_nodes_with_the_prior_score(node, other_node, anon_client, settings):
    spans = _spans(anon_client)
    assert set(spans) == {node.pk, other_node.pk}
    assert spans[node.pk]["reputation"] == settings.REPUTATION_PRIOR


def test_it_drops_a_node_under_the_threshold_and_keeps_the_others(node, other_node, anon_client):
    for _ in range(3):
        scoring.record_audit(other_node, passed=True)
    scoring.record_audit(node, passed=False)
    spans = _spans(anon_client)
    assert list(spans) == [other_node.pk]
    assert spans[other_node.pk]["reputation"] > 0.5


def test_it_drops_a_suspended_node_until_an_admin_lifts_it(node, anon_client, admin_user, settings):
    settings.REPUTATION_SUSPEND_FAILURES = 2
    for _ in range(100):
        scoring.record_audit(node, passed=True)
    scoring.record_audit(node, passed=False)
    assert node.pk in _spans(anon_client)  # one failure after a long good record: still above the threshold
    scoring.record_audit(node, passed=False)
    assert node.pk not in _spans(anon_client)
    scoring.lift_suspension(NodeStanding.objects.get(node=node), admin_user)
    assert node.pk in _spans(anon_client)


def test_it_keeps_no_node_when_the_prior_is_under_the_threshold(node, anon_client, settings):
    settings.REPUTATION_THRESHOLD = 0.6  # an operator who trusts no new node
    assert _spans(anon_client) == {}
    for _ in range(10):
        scoring.record_audit(node, passed=True)
    assert list(_spans(anon_client)) == [node.pk]


def test_it_reviews_suspensions_from_the_admin(node, admin_client_for, settings):
    settings.REPUTATION_SUSPEND_FAILURES = 1
    scoring.record_audit(node, passed=False)
    standing = NodeStanding.objects.get(node=node)
    client = admin_client_for()
    url = "/admin/reputation/nodestanding/"
    response = client.post(url, {"action": "uphold", "_selected_action": [standing.pk]})
    assert response.status_code == 302
    node.refresh_from_db()
    assert node.banned and NodeStanding.objects.get(node=node).review == NodeStanding.Review.UPHELD
