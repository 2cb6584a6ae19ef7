"""Spending: chat/API usage debits a user's balance once per reference; anonymous visitors have a quota."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from portal.ledger.books import balance, balance_of, system_account
from portal.ledger.models import Entry, Transaction
from portal.ledger.spending import (
    InsufficientCredits,
    QuotaExceeded,
    anonymous_tokens_left,
    charge_anonymous,
    charge_usage,
    tokens_affordable,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _quota(settings):
    settings.LEDGER_ANONYMOUS_QUOTA_TOKENS = 50


def test_it_grants_new_users_their_starting_credits(owner):
    assert balance_of(owner) == 1000
    grant = Transaction.objects.get(reference=f"grant:user:{owner.pk}")
    assert sorted(e.amount for e in grant.entries.all()) == [-1000, 1000]


def test_it_debits_usage_into_revenue(owner):
    txn = charge_usage(owner, tokens=7, reference="chat:1:1")
    assert txn.kind == "usage"
    assert balance_of(owner) == 1000 - 70
    assert balance(system_account("system:revenue")) == 70
    assert tokens_affordable(owner) == 93


def test_it_charges_a_reference_once(owner):
    first = charge_usage(owner, tokens=5, reference="api:req-9")
    again = charge_usage(owner, tokens=5, reference="api:req-9")
    assert again.pk == first.pk
    assert balance_of(owner) == 950
    assert Transaction.objects.filter(reference="usage:api:req-9").count() == 1


def test_it_refuses_a_charge_the_balance_cannot_pay_and_writes_nothing(owner):
    charge_usage(owner, tokens=95, reference="a")
    before = Entry.objects.count()
    with pytest.raises(InsufficientCredits) as caught:
        charge_usage(owner, tokens=6, reference="b")
    assert caught.value.balance == 50 and caught.value.needed == 60
    assert Entry.objects.count() == before
    assert balance_of(owner) == 50
    charge_usage(owner, tokens=5, reference="c")  # exactly the balance is fine
    assert balance_of(owner) == 0


def test_it_keeps_users_balances_apart(owner, other):
    charge_usage(owner, tokens=10, reference="x")
    assert balance_of(other) == 1000


def test_it_charges_nothing_for_zero_tokens_and_refuses_bad_arguments(owner):
    assert charge_usage(owner, tokens=0, reference="zero") is None
    with pytest.raises(ValueError):
        charge_usage(owner, tokens=-1, reference="neg")
    with pytest.raises(ValueError):
        charge_usage(owner, tokens=1, reference="")
    assert balance_of(owner) == 1000


def test_it_counts_anonymous_tokens_against_a_quota():
    assert anonymous_tokens_left("10.0.0.1") == 50
    assert charge_anonymous("10.0.0.1", tokens=30, reference="s1") == 20
    assert charge_anonymous("10.0.0.1", tokens=30, reference="s1") == 20  # retry: counted once
    with pytest.raises(QuotaExceeded):
        charge_anonymous("10.0.0.1", tokens=21, reference="s2")
    assert anonymous_tokens_left("10.0.0.1") == 20
    assert anonymous_tokens_left("10.0.0.2") == 50  # another visitor
    assert isinstance(QuotaExceeded(0, 1), InsufficientCredits)


def test_it_refuses_to_change_posted_entries(owner):
    from portal.ledger.models import AppendOnlyError

    entry = Entry.objects.filter(account__user=owner).first()
    entry.amount = 10**9
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        Entry.objects.filter(pk=entry.pk).update(amount=1)
    with pytest.raises(AppendOnlyError):
        Entry.objects.all().delete()
    assert User.objects.count() == 1


def test_it_refuses_updates_in_the_database_itself_on_postgresql(owner):
    from django.db import DatabaseError, connection, transaction

    if connection.vendor != "postgresql":
        pytest.skip("the append-only triggers exist on PostgreSQL only")
    entry = Entry.objects.filter(account__user=owner).first()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("UPDATE ledger_entry SET amount = 1 WHERE id = %s", [entry.pk])
    with pytest.raises(DatabaseError, match="unbalanced"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO ledger_entry (transaction_id, account_id, amount, created_at) VALUES (%s, %s, 5, now())",
                [entry.transaction_id, entry.account_id],
            )
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_it_flags_nonsense_ledger_settings(settings):
    from portal.ledger.checks import check_ledger_settings

    assert check_ledger_settings(None) == []
    settings.LEDGER_CREDITS_PER_TOKEN = -1
    settings.LEDGER_SETTLE_EVERY = 0
    settings.LEDGER_ESCROW_RELEASE_SCORE = 1.5
    assert sorted(e.id for e in check_ledger_settings(None)) == ["ledger.E001", "ledger.E002", "ledger.E003"]
