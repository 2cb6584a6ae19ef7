"""Funding: which node earnings real value paid for, and so may become payable.

Credits come into a user's account from three places: the starting **grant** (free), **deposits**
(credits bought with real value, :func:`portal.ledger.books.deposit`) and **earnings** (settled
receipts). Users spend them on chat/API usage (``USAGE``) and on receipts their own client keys sign
(``RECEIPT`` debits). Spending consumes the grant first, then deposits, then earnings (the order that
leaves the user the most payable credits; it is the order :func:`portal.ledger.payouts.payable` already
implies).

**Collected revenue** is what users spent on usage beyond their grants. Each credit of it was bought or
earned, so it may fund one payable credit of gateway work. The ledger records it per transaction
(``Transaction.funded``: a usage charge adds what its user paid beyond the grant, computed by
:func:`portal.ledger.books.post` under the user's lock; a settled gateway receipt uses its funded part), so

    gateway work made payable  =  -sum(funded of receipts)  <=  sum(funded of usage)  =  collected revenue

and the portal never owes nodes more payable credits than users paid in real value. A receipt paid by a
user's own client key is funded by exactly what that user paid beyond the grant for it
(:func:`unfunded_by_payer`); a receipt paid by the portal gateway (from ``system:rewards``, for chat and
API users charged through ``charge_usage``) is funded from what is left of collected revenue
(:func:`unfunded_by_gateway`). The unfunded rest (``Receipt.unfunded_credits``) is credited to the
earner's held account: never payable. Anonymous visitors' free quota collects nothing, so it funds nothing.
Usage charged before this rule existed (``funded`` 0) counts as unfunded: the safe side.
"""

from __future__ import annotations

from django.db.models import Sum

from portal.ledger.books import grant_left, system_account
from portal.ledger.models import Account, Transaction


def _funded(**filters) -> int:
    return Transaction.objects.filter(**filters).exclude(funded=0).aggregate(s=Sum("funded"))["s"] or 0


def collected_revenue() -> int:
    """Credits users spent on usage beyond their grants (see the module's docstring)."""
    return _funded(kind=Transaction.Kind.USAGE)


def gateway_funded() -> int:
    """Gateway work made payable so far (settled receipts and cleared flagged ones): what revenue already pays for."""
    return -_funded(funded__lt=0)


def unfunded_by_payer(payer: Account, amount: int) -> int:
    """The part of ``amount`` a user account would pay out of its grant (call with the account locked)."""
    return min(int(amount), grant_left(payer))


def unfunded_by_gateway(amount: int) -> int:
    """The part of ``amount`` (gateway work, paid by the system) that collected revenue does not cover.

    Locks ``system:rewards`` so that concurrent gateway settlements take from the revenue one at a time
    (each reads the sum after the previous one committed).
    """
    rewards = system_account("system:rewards")
    list(Account.objects.select_for_update().filter(pk=rewards.pk).values_list("pk"))
    left = max(0, _funded())
    return int(amount) - min(int(amount), left)
