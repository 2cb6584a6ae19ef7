"""Posting to the ledger: balanced, idempotent transactions with row locks on the accounts they debit.

Every movement of credits goes through :func:`post`. It

- refuses legs that do not sum to zero (double entry),
- is idempotent per ``reference``: posting a reference again returns the first transaction and moves
  nothing (a unique constraint settles races between processes),
- locks every account it takes credits out of (``SELECT ... FOR UPDATE`` in account-id order, so two
  postings never deadlock) and refuses with :class:`InsufficientCredits` when a user or escrow account
  would go below zero. Balances are sums of entries, read after the lock, so concurrent postings to
  one account serialize and none is lost.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from portal.ledger.models import Account, Entry, Transaction

# System accounts: (code, what it is for).
SYSTEM_ACCOUNTS = {
    "system:grants": "starting grants to new users are issued from here",
    "system:deposits": "credits bought with real value (money received outside the swarm) are issued from here",
    "system:revenue": "chat and API usage is paid into here",
    "system:rewards": "node rewards for receipts paid by the portal gateway are issued from here",
    "system:payouts-in-review": "credits of payout requests while an admin reviews them",
    "system:paid-out": "credits of approved payouts (paid outside the swarm)",
}


# What a user spends credits on (debits of their account): usage charges and the receipts their keys sign.
SPENDING_KINDS = (Transaction.Kind.USAGE, Transaction.Kind.RECEIPT)


class InsufficientCredits(Exception):
    """The account to debit holds fewer credits than the posting needs."""

    def __init__(self, account: Account, balance: int, needed: int):
        super().__init__(f"{account.code} holds {balance} credits, {needed} needed")
        self.account = account
        self.balance = balance
        self.needed = needed


class UnbalancedTransaction(ValueError):
    """The legs of a posting do not sum to zero."""


def system_account(code: str) -> Account:
    """The system account ``code`` (one of :data:`SYSTEM_ACCOUNTS`), created on first use."""
    if code not in SYSTEM_ACCOUNTS:
        raise KeyError(f"unknown system account {code!r}")
    return _get_or_create(code, kind=Account.Kind.SYSTEM)


def user_account(user) -> Account:
    """The user's spendable account (``user``: a user or its id); opening it posts the starting grant once."""
    user_id = getattr(user, "pk", user)
    account = Account.objects.filter(kind=Account.Kind.USER, user_id=user_id).first()
    if account is not None:
        return account
    if not hasattr(user, "pk"):
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.get(pk=user_id)
    account = _get_or_create(f"user:{user.pk}", kind=Account.Kind.USER, user=user)
    grant = int(settings.LEDGER_STARTING_GRANT)
    if grant > 0:  # idempotent: two processes opening the account at once post one grant
        post(
            Transaction.Kind.GRANT,
            f"grant:user:{user.pk}",
            [(system_account("system:grants"), -grant), (account, grant)],
            memo="starting grant",
        )
    return account


def held_account(user) -> Account:
    """The user's held account: earnings that are not payable (unfunded, or flagged and not yet reviewed)."""
    user_id = getattr(user, "pk", user)
    return _get_or_create(f"held:user:{user_id}", kind=Account.Kind.HELD, user_id=user_id)


def deposit(user, amount: int, reference: str, memo: str = "") -> Transaction:
    """Credit ``amount`` credits the user bought with real value (recorded by whoever received the money).

    Deposits are spendable, not payable themselves, and they are *collected revenue*: what a user spends
    out of them funds payable node earnings (``portal.ledger.funding``). Idempotent per ``reference``.

    Raises:
        ValueError: ``amount`` is not positive or ``reference`` is empty.
    """
    amount = int(amount)
    if amount <= 0 or not reference:
        raise ValueError("a deposit needs a positive amount and a reference (the payment's id)")
    return post(
        Transaction.Kind.DEPOSIT,
        f"deposit:{reference}",
        [(system_account("system:deposits"), -amount), (user_account(user), amount)],
        memo=memo or "credits bought",
    )


def escrow_account(node) -> Account:
    """The escrow account holding ``node``'s earnings until its reputation is built."""
    return _get_or_create(f"escrow:node:{node.pk}", kind=Account.Kind.ESCROW, user_id=node.owner_id, node=node)


def _get_or_create(code: str, **fields) -> Account:
    account = Account.objects.filter(code=code).first()
    if account is not None:
        return account
    try:
        with transaction.atomic():
            return Account.objects.create(code=code, **fields)
    except IntegrityError:  # another process opened it at the same moment
        return Account.objects.get(code=code)


def balance(account: Account) -> int:
    """The account's balance: the sum of its entries (0 without any)."""
    return Entry.objects.filter(account=account).aggregate(total=Sum("amount"))["total"] or 0


def balance_of(user) -> int:
    """A user's spendable credits (opens the account, with its grant, on first look)."""
    return balance(user_account(user))


def grant_left(account: Account) -> int:
    """Grant credits a user account has not spent yet (spending uses the grant first; see ``funding``)."""
    row = Entry.objects.filter(account=account).aggregate(
        spent=Sum("amount", filter=Q(amount__lt=0, transaction__kind__in=SPENDING_KINDS)),
        granted=Sum("amount", filter=Q(transaction__kind=Transaction.Kind.GRANT)),
    )
    return max(0, (row["granted"] or 0) + (row["spent"] or 0))


def post(
    kind: str,
    reference: str,
    legs: Iterable[tuple[Account, int]],
    *,
    memo: str = "",
    at=None,
    funded: int | None = None,
) -> Transaction:
    """Post one balanced transaction, or return the one already posted under ``reference``.

    Args:
        kind: a :class:`Transaction.Kind`.
        reference: the idempotency key (unique across the ledger).
        legs: ``(account, amount)`` pairs; amounts of one account are merged; zero legs are dropped.
        memo: a short note shown in statements.
        at: the transaction's time (default now).
        funded: the collected revenue it adds or uses (``Transaction.funded``); by default a usage charge adds
            what its user accounts pay beyond their grants (read under their locks), anything else 0.

    Returns:
        The transaction (new, or the earlier one with this reference).

    Raises:
        UnbalancedTransaction: the amounts do not sum to zero, or there is nothing to move.
        InsufficientCredits: a user or escrow account would go below zero (nothing is written).
    """
    merged: dict[int, int] = defaultdict(int)
    accounts: dict[int, Account] = {}
    for account, amount in legs:
        merged[account.pk] += int(amount)
        accounts[account.pk] = account
    merged = {pk: amount for pk, amount in merged.items() if amount != 0}
    if sum(merged.values()) != 0:
        raise UnbalancedTransaction(f"{reference}: legs sum to {sum(merged.values())}, not 0")
    if not merged:
        raise UnbalancedTransaction(f"{reference}: nothing to move")
    at = at or timezone.now()
    debited = sorted(pk for pk, amount in merged.items() if amount < 0 and not accounts[pk].may_go_negative)
    with transaction.atomic():
        if debited:
            # Row locks in id order: concurrent postings debiting the same accounts queue up here.
            list(Account.objects.select_for_update().filter(pk__in=debited).order_by("pk").values_list("pk"))
        existing = Transaction.objects.filter(reference=reference).first()
        if existing is not None:  # posted before (or by whoever held the lock before us)
            return existing
        if debited:
            for pk in debited:
                held = balance(accounts[pk])
                if held + merged[pk] < 0:
                    raise InsufficientCredits(accounts[pk], held, -merged[pk])
        if funded is None:
            funded = 0
            if kind == Transaction.Kind.USAGE:
                for pk in debited:
                    if accounts[pk].kind == Account.Kind.USER:
                        funded += -merged[pk] - min(-merged[pk], grant_left(accounts[pk]))
        try:
            with transaction.atomic():
                txn = Transaction.objects.create(
                    kind=kind, reference=reference, memo=memo[:300], created_at=at, funded=funded
                )
        except IntegrityError:  # the same reference committed by another process meanwhile
            return Transaction.objects.get(reference=reference)
        Entry.objects.bulk_create(
            [Entry(transaction=txn, account_id=pk, amount=amount, created_at=at) for pk, amount in merged.items()]
        )
    return txn
