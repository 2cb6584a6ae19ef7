"""Who may see and do what in the reputation app: owner / other user / anonymous / admin, every page and API."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from portal.accounts.models import ApiKey
from portal.reputation import scoring


@pytest.fixture
def admin_client(admin_user) -> APIClient:
    client = APIClient()
    client.force_login(admin_user)
    return client


@pytest.fixture
def evidence(node, other_node):
    scoring.record_audit(node, passed=False, auditor=other_node, session_id="secret-session", position=3)
    return node


READS = ["/nodes/{pk}/reputation/", "/api/v1/reputation/nodes/{pk}/"]


@pytest.mark.parametrize("url", READS)
def test_it_shows_a_nodes_standing_and_evidence_to_its_owner(url, evidence, owner_client):
    response = owner_client.get(url.format(pk=evidence.pk))
    assert response.status_code == 200
    assert b"secret-session" in response.content or response.json()["evidence"][0]["session_id"] == "secret-session"


@pytest.mark.parametrize("url", READS)
def test_it_hides_other_users_nodes_as_404(url, evidence, other_client):
    assert other_client.get(url.format(pk=evidence.pk)).status_code == 404


@pytest.mark.parametrize("url", READS)
def test_it_shows_any_node_to_staff(url, evidence, admin_client):
    assert admin_client.get(url.format(pk=evidence.pk)).status_code == 200


def test_it_sends_anonymous_visitors_to_log_in(evidence, anon_client):
    page = anon_client.get(f"/nodes/{evidence.pk}/reputation/")
    assert page.status_code == 302 and "/accounts/login/" in page["Location"]
    assert anon_client.get(f"/api/v1/reputation/nodes/{evidence.pk}/").status_code in (401, 403)


@pytest.mark.parametrize(
    "url, body",
    [
        ("/api/v1/reputation/evidence/", {}),
        ("/api/v1/reputation/steps/", {"node": 1, "ok": 1, "failed": 0}),
        ("/api/v1/reputation/nodes/{pk}/report/", {"reason": "bad"}),
    ],
)
def test_it_takes_reports_only_from_signed_in_users(url, body, node, anon_client, owner_token):
    url = url.format(pk=node.pk)
    assert anon_client.post(url, body, format="json").status_code in (401, 403)
    machine = APIClient()
    machine.credentials(HTTP_AUTHORIZATION=f"Bearer {owner_token}")  # a node token is not a user
    assert machine.post(url, body, format="json").status_code in (401, 403)


def test_it_takes_reports_from_api_keys(node, other, dealt):
    dealt(other, node)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiKey.create_for(other, 'gateway')[1]}")
    response = client.post("/api/v1/reputation/steps/", {"node": node.pk, "ok": 3, "failed": 0}, format="json")
    assert response.status_code == 200


def test_it_lets_only_staff_into_the_reputation_admin(evidence, owner_client, admin_client):
    for url in ["/admin/reputation/nodestanding/", "/admin/reputation/auditevidence/"]:
        assert owner_client.get(url).status_code == 302  # to the admin login
        assert admin_client.get(url).status_code == 200
    standing = evidence.standing
    page = admin_client.get(f"/admin/reputation/nodestanding/{standing.pk}/change/")
    assert page.status_code == 200 and b"score-history" in page.content and b"FAILED" in page.content
    evidence_url = f"/admin/reputation/auditevidence/{evidence.audit_evidence.get().pk}/change/"
    assert evidence_url.encode() in page.content and admin_client.get(evidence_url).status_code == 200
    assert admin_client.get("/admin/reputation/auditevidence/add/").status_code == 403
