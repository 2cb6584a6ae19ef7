"""Receipts are verified at submission and settled once: payer -> node owner (or the node's escrow)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from portal.ledger.books import balance, balance_of, escrow_account, system_account
from portal.ledger.models import Receipt, Transaction
from portal.ledger.receipts import ReceiptRefused, gateway_identity, submit_receipt
from portal.ledger.settlement import needs_escrow, release_escrow, settle_pending, settle_receipt
from portal.reputation.scoring import record_audit
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import SignedReceipt, UsageReceipt

pytestmark = pytest.mark.django_db


def test_it_pays_the_node_owner_from_the_clients_account(
    ledger_settings, owner, other, owner_node, client_identity, receipt_factory
):
    node, node_id = owner_node
    signed = receipt_factory(client_identity, node, node_id, tokens=7)  # 7 x 10 blocks = 70 block-tokens
    receipt, created = submit_receipt(signed.to_json(), submitted_by=owner)
    assert created and receipt.status == "pending" and receipt.block_tokens == 70 and receipt.earner == owner
    assert settle_pending() == 1
    receipt.refresh_from_db()
    assert receipt.status == "settled" and not receipt.escrowed
    assert balance_of(owner) == 1000 + 70
    assert balance_of(other) == 1000 - 70
    assert Transaction.objects.get(reference=f"receipt:{receipt.receipt_id}").kind == "receipt"


def test_it_pays_each_receipt_once_however_often_it_is_submitted_or_settled(
    ledger_settings, owner, owner_node, client_identity, receipt_factory
):
    node, node_id = owner_node
    signed = receipt_factory(client_identity, node, node_id, tokens=3)
    first, _ = submit_receipt(signed.to_json())
    again, created = submit_receipt(signed.to_json())
    assert again.pk == first.pk and not created
    for _ in range(3):
        settle_receipt(first.pk)
    settle_pending()
    assert balance_of(owner) == 1000 + 30
    assert Receipt.objects.count() == 1


def test_it_refuses_receipts_it_cannot_verify_or_attribute(
    ledger_settings, owner_node, client_identity, receipt_factory, node_factory, identities
):
    node, node_id = owner_node
    good = receipt_factory(client_identity, node, node_id, tokens=3)
    forged = {**good.to_json(), "node_signature": good.client_signature}
    with pytest.raises(ReceiptRefused) as caught:
        submit_receipt(forged)
    assert caught.value.code == "bad_receipt"
    stranger = NodeIdentity.generate()
    with pytest.raises(ReceiptRefused) as caught:
        submit_receipt(receipt_factory(stranger, node, node_id, tokens=3).to_json())
    assert caught.value.code == "unknown_client_key"
    unknown_node = node_factory(node.owner, identities[3], blocks=(10, 20))
    unknown_node.public_key = ""
    unknown_node.save()
    with pytest.raises(ReceiptRefused) as caught:
        submit_receipt(receipt_factory(client_identity, unknown_node, identities[3], tokens=3).to_json())
    assert caught.value.code == "unknown_node"
    old = receipt_factory(client_identity, node, node_id, tokens=3)
    with pytest.raises(ReceiptRefused) as caught:
        submit_receipt(old.to_json(), now=timezone.now() + dt.timedelta(days=30))
    assert caught.value.code == "stale_receipt"
    assert Receipt.objects.count() == 0


def test_it_refuses_a_different_receipt_under_a_used_id(ledger_settings, owner_node, client_identity, receipt_factory):
    node, node_id = owner_node
    a = receipt_factory(client_identity, node, node_id, tokens=3)
    submit_receipt(a.to_json())
    b_body = UsageReceipt(**{**a.receipt.__dict__, "tokens": 4})
    b = SignedReceipt(b_body, b_body.sign_as_client(client_identity), b_body.sign_as_node(node_id))
    with pytest.raises(ReceiptRefused) as caught:
        submit_receipt(b.to_json())
    assert caught.value.code == "conflict"


def test_it_refuses_settling_what_the_paying_user_cannot_afford(
    ledger_settings, owner, other, owner_node, client_identity, receipt_factory
):
    node, node_id = owner_node
    receipt, _ = submit_receipt(receipt_factory(client_identity, node, node_id, tokens=101).to_json())  # 1010 > 1000
    settle_receipt(receipt.pk)
    receipt.refresh_from_db()
    assert receipt.status == "refused" and "1000 credits, 1010 needed" in receipt.refusal
    assert balance_of(owner) == 1000 and balance_of(other) == 1000


def test_it_pays_gateway_receipts_from_the_system(
    ledger_settings, revenue, owner, owner_node, gateway_client, receipt_factory
):
    node, node_id = owner_node
    receipt, _ = submit_receipt(receipt_factory(gateway_client, node, node_id, tokens=50).to_json())
    settle_receipt(receipt.pk)
    assert balance_of(owner) == 1000 + 500
    assert balance(system_account("system:rewards")) == -500


def test_it_registers_the_gateway_identity_as_a_system_key(
    ledger_settings, tmp_path, owner, owner_node, receipt_factory
):
    ledger_settings.LEDGER_GATEWAY_IDENTITY = str(tmp_path / "gw.identity")
    identity = gateway_identity()
    assert gateway_identity().public_key == identity.public_key  # same key next time
    node, node_id = owner_node
    receipt, _ = submit_receipt(receipt_factory(identity, node, node_id, tokens=2).to_json())
    assert receipt.client_key.is_gateway


def test_it_holds_a_new_nodes_earnings_in_escrow_until_its_reputation_is_built(
    ledger_settings, revenue, owner, gateway_client, receipt_factory, node_factory, identities
):
    ledger_settings.LEDGER_ESCROW_MIN_AGE = 3600
    ledger_settings.LEDGER_ESCROW_RELEASE_SCORE = 0.6
    young = node_factory(owner, identities[4], blocks=(0, 30), age_s=60)
    assert needs_escrow(young)
    receipt, _ = submit_receipt(receipt_factory(gateway_client, young, identities[4], tokens=10).to_json())
    settle_receipt(receipt.pk)
    receipt.refresh_from_db()
    assert receipt.escrowed
    assert balance(escrow_account(young)) == 300 and balance_of(owner) == 1000
    assert release_escrow() == 0  # still young
    Node_ = type(young)
    Node_.objects.filter(pk=young.pk).update(registered_at=timezone.now() - dt.timedelta(days=2))
    young.refresh_from_db()
    assert release_escrow() == 0  # old enough, but the prior (0.5) is under 0.6
    for _ in range(10):
        record_audit(young, passed=True)
    assert not needs_escrow(young)
    assert release_escrow() == 1
    assert release_escrow() == 0  # nothing left: idempotent
    assert balance(escrow_account(young)) == 0 and balance_of(owner) == 1300


def test_it_releases_the_escrow_of_a_node_deleted_since(
    ledger_settings, revenue, owner, gateway_client, receipt_factory, node_factory, identities
):
    ledger_settings.LEDGER_ESCROW_MIN_AGE = 3600
    young = node_factory(owner, identities[5], blocks=(0, 30), age_s=60)
    receipt, _ = submit_receipt(receipt_factory(gateway_client, young, identities[5], tokens=2).to_json())
    settle_receipt(receipt.pk)
    escrow = escrow_account(young)
    assert balance(escrow) == 60
    young.delete()  # e.g. its token was deleted
    assert release_escrow() == 1
    assert balance(escrow) == 0 and balance_of(owner) == 1060
