"""Who may see and do what in the ledger: owner / other user / anonymous / admin, for every page and API.

Nobody but the owner (and admins, in the admin) sees a user's balance, receipts, payouts or evidence.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from portal.ledger import payouts
from portal.ledger.models import ClientKey, Payout
from portal.ledger.receipts import submit_receipt
from portal.ledger.settlement import settle_pending
from portal.reputation.scoring import record_audit

pytestmark = pytest.mark.django_db

PAGES = ["/credits/", "/nodes/dashboard/", "/credits/statements/2026-11/", "/credits/statements/2026-11/?format=csv"]
STAFF_PAGES = ["/staff/payouts/", "/staff/payouts/approved.csv"]
APIS = [
    "/api/v1/receipts/",
    "/api/v1/ledger/balance/",
    "/api/v1/ledger/transactions/",
    "/api/v1/ledger/client-keys/",
    "/api/v1/ledger/payouts/",
]


@pytest.fixture
def staff_client(db):
    admin = User.objects.create_superuser("root", "root@example.com", "root-password-1")
    client = APIClient()
    client.force_login(admin)
    client.user = admin
    return client


@pytest.fixture
def earned(ledger_settings, owner, owner_node, client_identity, receipt_factory):
    """The owner's node served bob's client 80 tokens x 10 blocks; settled; one audit failed; 500 requested."""
    node, node_identity = owner_node
    receipt, _ = submit_receipt(receipt_factory(client_identity, node, node_identity, tokens=80).to_json())
    settle_pending()
    record_audit(node, passed=False, session_id="secret-session-of-alice", position=7)
    payout = payouts.request_payout(owner, 500, "IBAN-ALICE-SECRET")
    return receipt, payout


def test_it_sends_anonymous_visitors_to_log_in(anon_client, earned):
    for url in PAGES + STAFF_PAGES:
        response = anon_client.get(url)
        assert response.status_code == 302 and "login" in response["Location"], url
    for url in APIS:
        assert anon_client.get(url).status_code in (401, 403), url
    assert anon_client.post("/api/v1/receipts/", {}, format="json").status_code in (401, 403)
    for url in ["/credits/keys/", "/credits/keys/1/revoke/", "/credits/payouts/"]:  # the page forms
        response = anon_client.post(url, {"amount": 5, "destination": "x", "key": "k", "name": "n"})
        assert response.status_code == 302 and "login" in response["Location"], url
    assert Payout.objects.count() == 1 and ClientKey.objects.count() == 1
    assert anon_client.post(
        "/api/v1/ledger/payouts/", {"amount": 5, "destination": "x"}, format="json"
    ).status_code in (
        401,
        403,
    )


def test_it_shows_the_owner_their_own_credits_receipts_and_evidence(owner_client, earned):
    receipt, payout = earned
    page = owner_client.get("/credits/").content.decode()
    assert "IBAN-ALICE-SECRET" in page
    assert 'id="balance">1300<' in page and ">800<" in page  # 1000 + 800 earned - 500 in review
    dashboard = owner_client.get("/nodes/dashboard/").content.decode()
    assert "FAILED" in dashboard and 'served-tokens">80<' in dashboard  # the failed audit and the served tokens
    body = owner_client.get("/api/v1/ledger/balance/").json()
    assert body["balance"] == 1300 and body["earned"] == 800 and body["payable"] == 300
    assert [r["receipt_id"] for r in owner_client.get("/api/v1/receipts/").json()] == [receipt.receipt_id]
    assert [p["id"] for p in owner_client.get("/api/v1/ledger/payouts/").json()] == [payout.pk]
    statement = owner_client.get("/credits/statements/2026-11/?format=csv")
    assert statement.status_code == 200 and statement["Content-Type"] == "text/csv"


def test_it_hides_the_owners_credits_receipts_and_evidence_from_another_user(other_client, earned):
    receipt, payout = earned
    for url in PAGES:
        body = other_client.get(url).content.decode()
        assert "IBAN-ALICE-SECRET" not in body and "secret-session-of-alice" not in body, url
    dashboard = other_client.get("/nodes/dashboard/").content.decode()
    assert "FAILED" not in dashboard and "You run no nodes" in dashboard
    # Bob paid the receipt, so he sees it as its payer; alice's payout and balance stay hidden.
    assert other_client.get("/api/v1/ledger/balance/").json() == {
        "balance": 200,
        "payable": 0,
        "earned": 0,
        "escrow": 0,
        "held": 0,
        "spent_on_usage": 1000,  # his grant, chatted away (see the client_identity fixture)
        "tokens_affordable": 20,
    }
    assert [r["receipt_id"] for r in other_client.get("/api/v1/receipts/").json()] == [receipt.receipt_id]
    assert [p["id"] for p in other_client.get("/api/v1/ledger/payouts/").json()] == []
    assert "IBAN-ALICE-SECRET" not in other_client.get("/api/v1/ledger/transactions/").content.decode()
    for url in STAFF_PAGES:
        response = other_client.get(url)
        assert response.status_code == 302 and "login" in response["Location"], url
    assert other_client.get(f"/admin/ledger/payout/{payout.pk}/review/").status_code == 302
    assert other_client.get(f"/admin/ledger/payout/{payout.pk}/change/").status_code == 302


def test_it_hides_receipts_from_users_who_neither_earned_nor_paid_them(earned):
    carol = User.objects.create_user("carol", "carol@example.com", "carol-password-1")
    client = APIClient()
    client.force_login(carol)
    assert client.get("/api/v1/receipts/").json() == []
    assert client.get("/api/v1/ledger/transactions/").json()[0]["kind"] == "grant"
    assert len(client.get("/api/v1/ledger/transactions/").json()) == 1


def test_it_lets_users_revoke_only_their_own_client_keys(owner_client, other_client, client_identity):
    bobs = ClientKey.objects.get(user__username="bob")
    assert owner_client.post(f"/api/v1/ledger/client-keys/{bobs.pk}/revoke/").status_code == 404
    assert owner_client.post(f"/credits/keys/{bobs.pk}/revoke/").status_code == 404
    bobs.refresh_from_db()
    assert bobs.revoked_at is None
    assert other_client.post(f"/api/v1/ledger/client-keys/{bobs.pk}/revoke/").status_code == 200
    bobs.refresh_from_db()
    assert bobs.revoked_at is not None


def test_it_gives_admins_the_review_queue_the_review_and_the_csv(staff_client, earned):
    receipt, payout = earned
    queue = staff_client.get("/staff/payouts/").content.decode()
    assert f'id="payout-{payout.pk}"' in queue and "1 failed audits" in queue
    review = staff_client.get(f"/admin/ledger/payout/{payout.pk}/review/").content.decode()
    assert "secret-session-of-alice"[:13] in review and 'id="earned">800<' in review
    assert "<svg" in review or "no history yet" in review  # the reputation history chart
    response = staff_client.post(
        f"/admin/ledger/payout/{payout.pk}/review/", {"decision": "approve", "external_reference": "SEPA-42"}
    )
    assert response.status_code == 302
    payout.refresh_from_db()
    assert payout.status == Payout.Status.APPROVED and payout.reviewed_by == staff_client.user
    csv_text = staff_client.get("/staff/payouts/approved.csv").content.decode()
    assert "SEPA-42" in csv_text and "IBAN-ALICE-SECRET" in csv_text
    assert [e.action for e in payout.events.all()] == ["requested", "approved"]


def test_it_takes_receipts_from_a_node_token_but_lists_nothing_to_it(
    ledger_settings, owner_token, owner, owner_node, client_identity, receipt_factory, node_client
):
    node, node_identity = owner_node
    body = receipt_factory(client_identity, node, node_identity, tokens=2).to_json()
    response = node_client(owner_token).post("/api/v1/receipts/", body, format="json")
    assert response.status_code == 201 and response.json()["status"] == "pending"
    assert node_client(owner_token).post("/api/v1/receipts/", body, format="json").status_code == 200
    bad = node_client(owner_token).post("/api/v1/receipts/", {**body, "node_signature": "AAAA"}, format="json")
    assert bad.status_code == 400 and bad.json()["error"] == "bad_receipt"
    assert node_client(owner_token).get("/api/v1/ledger/balance/").status_code in (401, 403)
