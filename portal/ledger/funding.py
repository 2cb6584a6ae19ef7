"""Funding: which node earnings real value paid for, and so may become payable.

Credits come into a user's account from three places: the starting **grant** (free), **deposits**
(credits bought with real value, :func:`portal.ledger.books.deposit`) and **earnings** (settled
receipts). Users spend them on chat/API usage (``USAGE``) and on receipts their own client keys sign
(``RECEIPT`` debits). Spending consumes the grant first, then deposits, then earnings (the order that
leaves the user the most payable credits; it is the order :func:`portal.ledger.payouts.payable` already
implies).

**Collected revenue** is what users spent beyond their grant: ``sum over users of max(0, spent - granted)``.
Each credit of it was bought or earned, so it may fund one payable credit of node earnings. A receipt's
**funded** part is ``block_tokens - unfunded_credits``; the ledger keeps

    sum of funded parts of settled receipts  <=  collected revenue

so the portal never owes nodes more payable credits than users paid in real value. A receipt paid by a
user's client key is funded by exactly what that user spent beyond the grant on it
(:func:`unfunded_by_payer`); a receipt paid by the portal gateway (from ``system:rewards``, for chat and
API users charged through ``charge_usage``) is funded from what is left of collected revenue
(:func:`unfunded_by_gateway`). The unfunded rest is credited to the earner's held account: spendable by
nobody, never payable. Anonymous visitors' free quota collects nothing, so it funds nothing either.
"""

from __future__ import annotations

from django.db.models import F, Q, Sum

from portal.ledger.books import system_account
from portal.ledger.models import Account, Entry, Receipt, Transaction

SPENDING = (Transaction.Kind.USAGE, Transaction.Kind.RECEIPT)


def spent_and_granted(account: Account) -> tuple[int, int]:
    """``(spent, granted)`` of a user account: credits spent on usage and receipts; credits granted."""
    row = Entry.objects.filter(account=account).aggregate(
        spent=Sum("amount", filter=Q(amount__lt=0, transaction__kind__in=SPENDING)),
        granted=Sum("amount", filter=Q(transaction__kind=Transaction.Kind.GRANT)),
    )
    return -(row["spent"] or 0), row["granted"] or 0


def collected_revenue() -> int:
    """Credits users spent beyond their grants, summed over users (see the module's docstring)."""
    rows = (
        Entry.objects.filter(account__kind=Account.Kind.USER)
        .values("account")
        .annotate(
            spent=Sum("amount", filter=Q(amount__lt=0, transaction__kind__in=SPENDING)),
            granted=Sum("amount", filter=Q(transaction__kind=Transaction.Kind.GRANT)),
        )
        .filter(spent__lt=0)
    )
    return sum(max(0, -(r["spent"] or 0) - (r["granted"] or 0)) for r in rows)


def funded_earnings() -> int:
    """The funded parts of all settled receipts: what collected revenue already pays for."""
    settled = Receipt.objects.filter(status=Receipt.Status.SETTLED)
    return settled.aggregate(s=Sum(F("block_tokens") - F("unfunded_credits")))["s"] or 0


def unfunded_by_payer(payer: Account, amount: int) -> int:
    """The part of ``amount`` a user account would pay out of its grant (call with the account locked)."""
    spent, granted = spent_and_granted(payer)
    return min(int(amount), max(0, granted - spent))


def unfunded_by_gateway(amount: int) -> int:
    """The part of ``amount`` (gateway work, paid by the system) that collected revenue does not cover.

    Locks ``system:rewards`` so that concurrent gateway settlements take from the revenue one at a time.
    """
    rewards = system_account("system:rewards")
    list(Account.objects.select_for_update().filter(pk=rewards.pk).values_list("pk"))
    left = max(0, collected_revenue() - funded_earnings())
    return int(amount) - min(int(amount), left)
