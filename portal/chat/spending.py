"""Charging users for answers through the ledger, when the ledger app provides it.

``portal.ledger.spending.charge_usage(user, tokens=..., reference=...)`` debits the user's credits
(idempotent per ``reference``) and raises ``InsufficientCredits`` when they run out. Until the ledger
ships it, answers are free and these functions do nothing.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model


class OutOfCredits(Exception):
    """The user has no credits left for another answer."""


def _ledger():
    try:
        from portal.ledger import spending
    except ImportError:
        return None
    return spending if hasattr(spending, "charge_usage") else None


def check_credits(user_id: int) -> None:
    """Refuse to start an answer for a user whose balance is already exhausted (if the ledger can tell).

    Raises:
        OutOfCredits: the ledger says the balance is zero or less.
    """
    ledger = _ledger()
    balance = getattr(ledger, "balance_of", None) if ledger else None
    if balance is not None and balance(get_user_model().objects.get(pk=user_id)) <= 0:
        raise OutOfCredits("you have no credits left: contribute a GPU to earn some")


def charge_answer(user_id: int, tokens: int, reference: str) -> None:
    """Charge ``tokens`` (prompt + answer) to the user, once per ``reference``.

    Raises:
        OutOfCredits: the ledger refused (the answer was still delivered; the next one is refused).
    """
    ledger = _ledger()
    if ledger is None or tokens <= 0:
        return
    try:
        ledger.charge_usage(get_user_model().objects.get(pk=user_id), tokens=tokens, reference=reference)
    except ledger.InsufficientCredits as exc:
        raise OutOfCredits(f"you are out of credits: {exc}") from None
