"""Property tests: whatever order receipts, duplicates, replays, usage charges and payouts come in, the books hold.

Hypothesis draws a sequence of operations; after every sequence (and after every operation) we check:

- every transaction's entries sum to zero, and all entries together sum to zero;
- no user or escrow account is below zero;
- each receipt is paid at most once: one ``receipt:<id>`` transaction per settled receipt, none otherwise;
- the node owners received exactly the block-tokens of the settled receipts (directly, via escrow, or into
  their held account);
- payable node earnings never exceed collected revenue (what users spent beyond their grants);
- nobody was paid out more than they earned, and never more than the funded, unflagged part of it.
"""

from __future__ import annotations

import pytest
from django.db import transaction
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.ledger import funding, payouts, settlement
from portal.ledger.books import balance, deposit, escrow_account, held_account, user_account
from portal.ledger.models import Account, Entry, Payout, Receipt, Transaction
from portal.ledger.receipts import ReceiptRefused, submit_receipt
from portal.ledger.spending import InsufficientCredits, charge_usage

pytestmark = pytest.mark.django_db

OPS = st.one_of(
    st.tuples(st.just("receipt"), st.integers(0, 2), st.integers(0, 1), st.integers(1, 80)),
    st.tuples(st.just("resubmit"), st.integers(0, 50)),
    st.tuples(st.just("settle"), st.integers(0, 50)),
    st.tuples(st.just("settle_pending"), st.integers(1, 5)),
    st.tuples(st.just("charge"), st.integers(0, 2), st.integers(0, 60), st.integers(0, 5)),
    st.tuples(st.just("payout"), st.integers(0, 2), st.integers(1, 1500)),
    st.tuples(st.just("decide"), st.integers(0, 20), st.sampled_from(["approve", "reject", "hold"])),
    st.tuples(st.just("trust"), st.booleans()),
    st.tuples(st.just("release")),
    st.tuples(st.just("deposit"), st.integers(0, 2), st.integers(1, 2000), st.integers(0, 5)),
)


def check_books() -> None:
    """The invariants of the module docstring."""
    unbalanced = (
        Entry.objects.values("transaction_id")
        .annotate(total=Sum("amount"))
        .exclude(total=0)
        .values_list("transaction_id")
    )
    assert list(unbalanced) == []
    assert (Entry.objects.aggregate(s=Sum("amount"))["s"] or 0) == 0
    for account in Account.objects.exclude(kind=Account.Kind.SYSTEM):
        assert balance(account) >= 0, account.code
    receipt_txns = Transaction.objects.filter(kind=Transaction.Kind.RECEIPT)
    settled = Receipt.objects.filter(status=Receipt.Status.SETTLED)
    assert receipt_txns.count() == settled.count()
    assert set(receipt_txns.values_list("reference", flat=True)) == {
        f"receipt:{r}" for r in settled.values_list("receipt_id", flat=True)
    }
    for r in settled:
        assert r.transaction.reference == f"receipt:{r.receipt_id}"
        legs = [e.amount for e in r.transaction.entries.all()]
        assert [a for a in legs if a < 0] == [-r.block_tokens] and sum(a for a in legs if a > 0) == r.block_tokens
        assert 0 <= r.unfunded_credits <= r.held_credits <= r.block_tokens
        assert r.held_credits == (r.block_tokens if r.flag else r.unfunded_credits)
    earned = Entry.objects.filter(transaction__kind=Transaction.Kind.RECEIPT, amount__gt=0).aggregate(s=Sum("amount"))
    assert (earned["s"] or 0) == (settled.aggregate(s=Sum("block_tokens"))["s"] or 0)
    for p in Payout.objects.filter(status=Payout.Status.APPROVED).values("user").annotate(s=Sum("amount")):
        user_earned = Receipt.objects.filter(earner_id=p["user"], status=Receipt.Status.SETTLED).aggregate(
            s=Sum("block_tokens")
        )["s"]
        assert p["s"] <= (user_earned or 0)
        funded = Receipt.objects.filter(earner_id=p["user"], status=Receipt.Status.SETTLED).aggregate(
            s=Sum("block_tokens") - Sum("held_credits")
        )["s"]
        assert p["s"] <= (funded or 0)
    assert funding.gateway_funded() <= funding.collected_revenue()


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(ops=st.lists(OPS, min_size=1, max_size=30))
def test_it_keeps_the_books_balanced_under_any_interleaving(
    ops, ledger_settings, owner, other, node_factory, receipt_factory, identities
):
    from django.contrib.auth.models import User

    from portal.ledger.models import ClientKey
    from swarmnode.trust.receipts import key_of

    with transaction.atomic():  # each example starts from the same state and leaves nothing behind
        ledger_settings.LEDGER_STARTING_GRANT = 500  # small (alice and bob have 1000), so credits run out
        ledger_settings.LEDGER_ESCROW_MIN_AGE = 0
        ledger_settings.LEDGER_ESCROW_RELEASE_SCORE = 1.0  # nobody is trusted until an op says so
        third = User.objects.create_user("carol")
        root = User.objects.create_superuser("root", "root@example.com", "pw")  # decides payouts (four eyes)
        users = [owner, other, third]
        nodes = [
            (node_factory(owner, identities[0], blocks=(0, 10)), identities[0]),
            (node_factory(other, identities[3], blocks=(10, 30)), identities[3]),
        ]
        clients = [identities[1], identities[2], identities[4]]
        ClientKey.objects.create(user=other, key=key_of(clients[0]), name="bob's client")
        ClientKey.objects.create(user=third, key=key_of(clients[1]), name="carol's client")
        ClientKey.objects.create(user=None, key=key_of(clients[2]), name="gateway")
        made = []
        for op in ops:
            kind = op[0]
            if kind == "receipt":
                node, node_identity = nodes[op[2]]
                signed = receipt_factory(clients[op[1]], node, node_identity, tokens=op[3])
                try:
                    made.append(submit_receipt(signed.to_json())[0])
                except ReceiptRefused as exc:
                    assert exc.code == "own_node" and op[1] == 0 and op[2] == 1  # bob's key, bob's node
                    continue
                made[-1].signed = signed
            elif kind == "resubmit" and made:
                r = made[op[1] % len(made)]
                again, created = submit_receipt(r.signed.to_json())
                assert again.pk == r.pk and not created
            elif kind == "settle" and made:
                settlement.settle_receipt(made[op[1] % len(made)].pk)
            elif kind == "settle_pending":
                settlement.settle_pending(limit=op[1])
            elif kind == "charge":
                try:
                    charge_usage(users[op[1]], tokens=op[2], reference=f"ref-{op[3]}")
                except InsufficientCredits:
                    pass
            elif kind == "payout":
                try:
                    payouts.request_payout(users[op[1]], op[2], f"IBAN XX{op[1]}")
                except payouts.PayoutRefused as exc:
                    assert exc.code == "not_payable"
            elif kind == "decide":
                open_ = list(Payout.objects.order_by("id"))
                if open_:
                    p = open_[op[1] % len(open_)]
                    try:
                        if op[2] == "approve":
                            payouts.approve(p, root, "bank-ref-1")
                        elif op[2] == "reject":
                            payouts.reject(p, root, "not verified")
                        else:
                            payouts.hold(p, root, "checking")
                    except payouts.PayoutRefused as exc:
                        assert exc.code == "closed" and not p.open
            elif kind == "trust":
                ledger_settings.LEDGER_ESCROW_RELEASE_SCORE = 0.0 if op[1] else 1.0
            elif kind == "release":
                settlement.release_escrow()
            elif kind == "deposit":
                deposit(users[op[1]], op[2], reference=f"bank-{op[3]}")
            check_books()
        settlement.settle_pending(limit=1000)
        ledger_settings.LEDGER_ESCROW_RELEASE_SCORE = 0.0
        settlement.release_escrow()
        check_books()
        # With everything settled and released, each owner holds: grant + bought + funded unflagged earnings - spent
        # - paid out or in review, and the rest of what they earned sits in their held account.
        for user in users:
            mine = Receipt.objects.filter(earner=user, status="settled")
            got = mine.aggregate(s=Sum("block_tokens"))["s"] or 0
            held = mine.aggregate(s=Sum("held_credits"))["s"] or 0
            assert balance(held_account(user)) == held
            deposits = Entry.objects.filter(account=user_account(user), transaction__kind=Transaction.Kind.DEPOSIT)
            bought = deposits.aggregate(s=Sum("amount"))["s"] or 0
            assert sum(balance(escrow_account(n)) for n, _ in nodes if n.owner == user) == 0
            spent = -(
                Entry.objects.filter(
                    account=user_account(user),
                    transaction__kind__in=[Transaction.Kind.USAGE, Transaction.Kind.RECEIPT],
                    amount__lt=0,
                ).aggregate(s=Sum("amount"))["s"]
                or 0
            )
            out = Payout.objects.filter(user=user).exclude(status="rejected").aggregate(s=Sum("amount"))["s"] or 0
            grant = Transaction.objects.get(reference=f"grant:user:{user.pk}").entries.get(amount__gt=0).amount
            assert balance(user_account(user)) == grant + bought + got - held - spent - out
        transaction.set_rollback(True)


def test_it_refuses_resubmission_of_a_tampered_duplicate(
    ledger_settings, owner, owner_node, client_identity, receipt_factory
):
    node, node_identity = owner_node
    signed = receipt_factory(client_identity, node, node_identity, tokens=5)
    submit_receipt(signed.to_json())
    tampered = {**signed.to_json(), "client_signature": signed.node_signature}
    with pytest.raises(ReceiptRefused):
        submit_receipt(tampered)
    assert Receipt.objects.count() == 1
