"""Settlement: pay stored receipts, once each; hold new nodes' earnings in escrow until they earn trust.

:func:`settle_receipt` pays one receipt in one database transaction:

1. lock the receipt row (``SELECT ... FOR UPDATE``); a receipt that is not ``pending`` any more was
   settled or refused by someone else: nothing to do;
2. post the ledger transaction ``receipt:<receipt_id>`` (unique reference): ``block_tokens`` credits
   from the payer (the client key's user, or ``system:rewards`` for the portal gateway) to the node's
   owner, or to the node's escrow account while the node is new (:func:`needs_escrow`);
3. mark the receipt ``settled`` (or ``refused`` when the paying user's balance is short).

Only the **funded** part of a receipt (``portal.ledger.funding``: paid for with real value, not with a
grant, and for gateway work within collected revenue) goes to the owner or escrow; the unfunded rest
goes to the owner's held account, never payable. A receipt that looks like linked traffic
(``portal.ledger.linking``: an account paying its own node) is held in full and flagged for review.

A worker killed anywhere in between leaves nothing half-done (the transaction rolls back, the lock
goes with the connection) and the receipt still ``pending`` for the next run; a retried or duplicated
task finds it settled, or collides on the unique reference: no receipt is ever paid twice.
:func:`settle_pending` is the Celery beat task's body; concurrent runs skip rows others hold.

Escrow: a node's earnings go to ``escrow:node:<id>`` until the node is at least ``LEDGER_ESCROW_MIN_AGE``
seconds old and its reputation (``portal.reputation.scoring.node_score``) is at least
``LEDGER_ESCROW_RELEASE_SCORE``; :func:`release_escrow` then moves what it holds to the owner. A
suspended or banned node's escrow stays held.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from portal.ledger import funding, linking
from portal.ledger.books import (
    InsufficientCredits,
    UnbalancedTransaction,
    balance,
    escrow_account,
    held_account,
    post,
    system_account,
    user_account,
)
from portal.ledger.models import Account, Entry, Receipt, Transaction
from portal.reputation.scoring import node_score


def needs_escrow(node, now: dt.datetime | None = None) -> bool:
    """True while ``node`` is too new or not trusted enough for its earnings to be spendable."""
    if node is None:  # deleted since the receipt was accepted: nothing left to build trust on
        return False
    now = now or timezone.now()
    young = (now - node.registered_at).total_seconds() < settings.LEDGER_ESCROW_MIN_AGE
    if young or node.banned:
        return True
    return node_score(node, now) < settings.LEDGER_ESCROW_RELEASE_SCORE


def _payer(receipt: Receipt) -> Account:
    key = receipt.client_key
    return system_account("system:rewards") if key.user_id is None else user_account(key.user_id)


def settle_receipt(pk: int, now: dt.datetime | None = None) -> Receipt:
    """Settle receipt ``pk`` if it is still pending; return it as it stands afterwards."""
    with transaction.atomic():
        receipt = (
            Receipt.objects.select_for_update(of=("self",))
            .select_related("client_key__user", "node", "earner")
            .get(pk=pk)
        )
        if receipt.status != Receipt.Status.PENDING:
            return receipt
        return _settle_locked(receipt, now or timezone.now())


def _settle_locked(receipt: Receipt, now: dt.datetime) -> Receipt:
    escrowed = needs_escrow(receipt.node, now)
    to = escrow_account(receipt.node) if escrowed else user_account(receipt.earner_id)
    memo = f"{receipt.block_tokens} block-tokens, {receipt.model} [{receipt.start_block}:{receipt.end_block})"
    payer = _payer(receipt)
    with transaction.atomic():
        flag = linking.receipt_flag(receipt)[:200]
        gateway = payer.kind == Account.Kind.SYSTEM
        # The funding split reads the payer's spending (or the revenue pool): lock it first, as post() will.
        if gateway and flag:
            unfunded = receipt.block_tokens  # takes no revenue unless an admin clears it (review.clear_receipt)
        elif gateway:
            unfunded = funding.unfunded_by_gateway(receipt.block_tokens)
        else:
            list(Account.objects.select_for_update().filter(pk=payer.pk).values_list("pk"))
            unfunded = funding.unfunded_by_payer(payer, receipt.block_tokens)
        held = receipt.block_tokens if flag else unfunded
        legs = [(payer, -receipt.block_tokens), (to, receipt.block_tokens - held)]
        if held:
            legs.append((held_account(receipt.earner_id), held))
        try:
            # Gateway work uses collected revenue for its funded part; a user's key paid its own (funded 0).
            uses = receipt.block_tokens - unfunded if gateway else 0
            ref = f"receipt:{receipt.receipt_id}"
            txn = post(Transaction.Kind.RECEIPT, ref, legs, memo=memo, at=now, funded=-uses)
        except (InsufficientCredits, UnbalancedTransaction) as exc:  # short, or (defensively) paying itself
            txn, refusal = None, f"not payable: {exc}"[:300]
    if txn is None:
        receipt.status = Receipt.Status.REFUSED
        receipt.refusal = refusal
        receipt.settled_at = now
        receipt.save(update_fields=["status", "refusal", "settled_at"])
        return receipt
    receipt.status = Receipt.Status.SETTLED
    receipt.transaction = txn
    receipt.escrowed = escrowed
    receipt.settled_at = now
    receipt.unfunded_credits, receipt.flag, receipt.held_credits = unfunded, flag, held
    receipt.save(
        update_fields=["status", "transaction", "escrowed", "settled_at", "unfunded_credits", "flag", "held_credits"]
    )
    return receipt


def settle_pending(limit: int = 500, now: dt.datetime | None = None) -> int:
    """Settle up to ``limit`` pending receipts, oldest first, one transaction each; return how many settled.

    Safe to run in several workers at once: each locks its receipt with ``SKIP LOCKED`` so workers
    spread over different rows instead of queueing on the same one.
    """
    done = 0
    for _ in range(limit):
        with transaction.atomic():
            receipt = (
                Receipt.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("client_key__user", "node", "earner")
                .filter(status=Receipt.Status.PENDING)
                .order_by("id")
                .first()
            )
            if receipt is None:
                break
            _settle_locked(receipt, now or timezone.now())
            done += 1
    return done


def release_escrow(now: dt.datetime | None = None) -> int:
    """Move escrowed earnings of nodes that built their reputation to their owners; return how many moved."""
    now = now or timezone.now()
    moved = 0
    # A node deleted since (its escrow account's node is NULL) has nothing left to prove: released too.
    for account in Account.objects.filter(kind=Account.Kind.ESCROW).select_related("node"):
        if needs_escrow(account.node, now):
            continue
        if release_one(account, now) is not None:
            moved += 1
    return moved


def release_one(account: Account, now: dt.datetime | None = None) -> Transaction | None:
    """Release everything ``account`` (an escrow account) holds to its owner; idempotent per content."""
    with transaction.atomic():
        locked = Account.objects.select_for_update().get(pk=account.pk)
        held = balance(locked)
        if held <= 0:
            return None
        upto = Entry.objects.filter(account=locked).aggregate(last=Max("id"))["last"]
        return post(
            Transaction.Kind.ESCROW_RELEASE,
            f"escrow-release:{locked.code}:{upto}",
            [(locked, -held), (user_account(locked.user), held)],
            memo=f"node #{locked.node_id} built its reputation",
            at=now,
        )
