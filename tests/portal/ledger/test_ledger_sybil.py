"""Sybil earnings (#17 finding 7): grants never turn into payouts; gateway earnings are capped at collected
revenue; traffic between linked accounts is held for review; nobody approves their own payout (four eyes).

Each test performs the attack the way a stranger would: a fresh account with the starting grant, a node of
its own (a real Ed25519 identity that countersigns receipts), the portal gateway's real signing identity
and the real charge / submit / settle / payout functions the chat, the API and Celery call.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from portal.accounts.models import NodeToken
from portal.generation import spending as generation_spending
from portal.generation.requesters import Requester
from portal.ledger import funding, payouts
from portal.ledger.books import balance, balance_of, deposit, held_account
from portal.ledger.models import ClientKey, Payout, Receipt
from portal.ledger.receipts import gateway_identity
from portal.ledger.review import clear_receipt
from portal.ledger.settlement import release_escrow, settle_pending
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import key_of

User = get_user_model()


@pytest.fixture
def gateway(db, ledger_settings, tmp_path):
    """The portal gateway's real signing identity (what ``ModelPool`` loads for every chat/API session)."""
    ledger_settings.LEDGER_GATEWAY_IDENTITY = str(tmp_path / "gateway.identity")
    return gateway_identity()


@pytest.fixture
def mallory(db):
    """A stranger's fresh account: open sign-up, nothing but the starting grant (1000 credits here)."""
    return User.objects.create_user("mallory", "mallory@mallory.test", "pw-mallory-1")


def _post_receipt(user, signed) -> Receipt:
    """The node posts the receipt it countersigned with its owner's node token (``swarmnode serve --token``)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {NodeToken.create_for(user, 'poster')[1]}")
    response = client.post("/api/v1/receipts/", signed.to_json(), format="json")
    assert response.status_code == 201, response.content
    return Receipt.objects.get(receipt_id=response.json()["receipt_id"])


def _chat(user, tokens: int, reference: str) -> None:
    """What the gateway does after an answer: charge the requester (portal.generation.spending.charge)."""
    generation_spending.charge(Requester(user_id=user.pk), "203.0.113.7", tokens, reference)


def test_it_pays_out_nothing_when_a_fresh_account_spends_its_grant_on_its_own_node(
    ledger_settings, revenue, gateway, mallory, owner, node_factory, receipt_factory, identities
):
    # Honest revenue exists (carol bought and spent 100,000 credits), so only the flag stops mallory.
    node_id = NodeIdentity.generate()
    node = node_factory(mallory, node_id, blocks=(0, 30))
    _chat(mallory, 100, "chat:mallory:1")  # the whole grant: 100 tokens x 10 credits
    assert balance_of(mallory) == 0
    # The gateway's session through her node: 100 positions x 30 blocks, signed by gateway and node.
    receipt = _post_receipt(mallory, receipt_factory(gateway, node, node_id, tokens=100))
    # Meanwhile alice's node served other people's chats: funded by revenue, paid, not flagged.
    honest = node_factory(owner, identities[3], blocks=(0, 30))
    honest_receipt = _post_receipt(owner, receipt_factory(gateway, honest, identities[3], tokens=100))
    assert settle_pending() == 2 and release_escrow() == 0
    receipt.refresh_from_db()
    honest_receipt.refresh_from_db()

    assert receipt.status == "settled"
    assert payouts.payable(mallory) == 0 and balance_of(mallory) == 0
    with pytest.raises(payouts.PayoutRefused) as refused:
        payouts.request_payout(mallory, 1000, "IBAN MALLORY")
    assert refused.value.code == "not_payable"
    assert not Payout.objects.filter(user=mallory).exists()
    assert receipt.held_credits == 3000 and balance(held_account(mallory)) == 3000
    assert receipt.flag and "owner" in receipt.flag

    assert not honest_receipt.flag and honest_receipt.unfunded_credits == 0
    assert payouts.payable(owner) == 3000
    # The flag is what admins see next to her earnings.
    flagged = Receipt.objects.filter(earner=mallory).exclude(flag="")
    assert list(flagged) == [receipt]


def test_it_holds_gateway_earnings_beyond_collected_revenue(
    ledger_settings, gateway, owner, other, node_factory, receipt_factory, identities, django_user_model
):
    # Nobody paid anything yet: every signed-in user chatted on grants, anonymous visitors on the free quota.
    _chat(other, 100, "chat:bob:1")
    node = node_factory(owner, identities[3], blocks=(0, 30))
    first = _post_receipt(owner, receipt_factory(gateway, node, identities[3], tokens=10))
    settle_pending()
    first.refresh_from_db()
    assert first.status == "settled" and not first.flag and first.unfunded_credits == 300
    assert payouts.payable(owner) == 0 and balance(held_account(owner)) == 300

    # Dave buys 500 credits and spends them (after his grant): 500 credits of revenue fund 500 of the next 600.
    dave = django_user_model.objects.create_user("dave", "dave@example.org", "pw")
    deposit(dave, 500, reference="bank:dave")
    _chat(dave, 150, "chat:dave:1")
    second = _post_receipt(owner, receipt_factory(gateway, node, identities[3], tokens=20))
    settle_pending()
    second.refresh_from_db()
    assert second.unfunded_credits == 100 and payouts.payable(owner) == 500
    assert funding.gateway_funded() == funding.collected_revenue() == 500


def test_it_holds_what_a_second_account_pays_out_of_its_grant_or_while_linked(
    ledger_settings, mallory, node_factory, receipt_factory, identities
):
    # Mallory's sock puppet signs receipts for her node with its own client key (no gateway involved).
    node_id = NodeIdentity.generate()
    node = node_factory(mallory, node_id, blocks=(0, 10))
    puppet = User.objects.create_user("puppet", "Mallory+2@Mallory.test", "pw-puppet-1")
    client = NodeIdentity.generate()
    ClientKey.objects.create(user=puppet, key=key_of(client), name="puppet script")
    grant_paid = _post_receipt(mallory, receipt_factory(client, node, node_id, tokens=50))
    settle_pending()
    grant_paid.refresh_from_db()
    assert grant_paid.status == "settled" and grant_paid.unfunded_credits == 500
    assert "same e-mail address" in grant_paid.flag
    assert payouts.payable(mallory) == 0

    # Even credits the puppet bought do not make it payable while the accounts look linked ...
    deposit(puppet, 2000, reference="bank:puppet")
    bought = _post_receipt(mallory, receipt_factory(client, node, node_id, tokens=100))
    settle_pending()
    bought.refresh_from_db()
    assert bought.unfunded_credits == 500 and bought.held_credits == 1000 and bought.flag
    assert payouts.payable(mallory) == 0 and balance(held_account(mallory)) == 1500

    # ... until an admin other than the earner reviews it; then only the part real value paid for is payable.
    with pytest.raises(payouts.PayoutRefused) as own:
        clear_receipt(bought, mallory)
    assert own.value.code == "own_receipt"
    root = User.objects.create_superuser("root", "root@example.com", "root-password-1")
    clear_receipt(bought, root)
    assert clear_receipt(bought, root) is None  # idempotent
    assert payouts.payable(mallory) == 500 and balance(held_account(mallory)) == 1000


def test_it_links_accounts_by_payout_destination_and_private_domain(mallory, other):
    from portal.ledger.linking import link_reason, linked_users

    colleague = User.objects.create_user("eve", "eve@mallory.test", "pw")
    assert link_reason(mallory, colleague) == "same e-mail domain (mallory.test)"
    assert link_reason(mallory, other) == ""  # bob is at example.com, a public domain
    Payout.objects.create(user=other, amount=5, destination="DE00 1234 5678")
    Payout.objects.create(user=mallory, amount=5, destination="de0012345678")
    assert link_reason(mallory, other) == "same payout destination"
    assert set(linked_users(mallory)) == {mallory.pk, colleague.pk, other.pk}


def test_it_refuses_an_admin_deciding_their_own_payout(
    ledger_settings, owner, owner_node, client_identity, receipt_factory
):
    owner.is_staff = owner.is_superuser = True
    owner.save()
    node, node_id = owner_node
    _post_receipt(owner, receipt_factory(client_identity, node, node_id, tokens=50))  # bob's bought credits
    settle_pending()
    payout = payouts.request_payout(owner, 500, "IBAN ALICE")
    admin_client = APIClient()
    admin_client.force_login(owner)
    response = admin_client.post(
        f"/admin/ledger/payout/{payout.pk}/review/", {"decision": "approve", "external_reference": "SEPA-1"}
    )
    assert response.status_code == 200 and b"four eyes" in response.content
    for decide in (
        lambda: payouts.approve(payout, owner, "SEPA-1"),
        lambda: payouts.hold(payout, owner, "later"),
        lambda: payouts.reject(payout, owner, "oops"),
    ):
        with pytest.raises(payouts.PayoutRefused) as refused:
            decide()
        assert refused.value.code == "own_payout"
    payout.refresh_from_db()
    assert payout.status == Payout.Status.REQUESTED and [e.action for e in payout.events.all()] == ["requested"]
    root = User.objects.create_superuser("root", "root@example.com", "root-password-1")
    assert payouts.approve(payout, root, "SEPA-1").status == Payout.Status.APPROVED


def test_it_shows_flagged_receipts_in_review_and_clears_them_only_by_another_admin(
    ledger_settings, revenue, gateway, mallory, node_factory, receipt_factory
):
    mallory.is_staff = mallory.is_superuser = True  # even an admin account cannot launder its own traffic
    mallory.save()
    node_id = NodeIdentity.generate()
    node = node_factory(mallory, node_id, blocks=(0, 30))
    _chat(mallory, 40, "chat:mallory:1")
    receipt = _post_receipt(mallory, receipt_factory(gateway, node, node_id, tokens=40))
    settle_pending()
    receipt.refresh_from_db()
    # Flagged gateway work takes no revenue (it cannot drain honest nodes' funding) until it is cleared.
    assert receipt.flag and receipt.unfunded_credits == 1200 and receipt.held_credits == 1200
    deposit(mallory, 5000, reference="bank:mallory")  # a payout needs something payable: she cannot get one
    with pytest.raises(payouts.PayoutRefused):
        payouts.request_payout(mallory, 1000, "IBAN MALLORY")

    action = {"action": "clear_flagged", "_selected_action": [receipt.pk]}
    own = APIClient()
    own.force_login(mallory)
    refused = own.post("/admin/ledger/receipt/?flagged=yes", action, follow=True).content.decode()
    assert "not cleared: four eyes" in refused
    receipt.refresh_from_db()
    assert receipt.cleared_at is None and payouts.payable(mallory) == 0

    root = User.objects.create_superuser("root", "root@example.com", "root-password-1")
    staff = APIClient()
    staff.force_login(root)
    listing = staff.get("/admin/ledger/receipt/?flagged=yes").content.decode()
    assert receipt.receipt_id in listing and "used the gateway" in listing
    staff.post("/admin/ledger/receipt/?flagged=yes", action)
    receipt.refresh_from_db()
    assert receipt.cleared_by == root and receipt.unfunded_credits == 0 and payouts.payable(mallory) == 1200
    payout = payouts.request_payout(mallory, 1200, "IBAN MALLORY")
    review = own.get(f"/admin/ledger/payout/{payout.pk}/review/").content.decode()
    assert "Four eyes: this is your own payout" in review
