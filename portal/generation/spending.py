"""What an answer costs: signed-in users pay credits (``portal.ledger``), anonymous visitors use a free quota.

Before a generation, :func:`tokens_allowed` says how many tokens the requester can still pay for
(``reservations.reserve`` holds part of it for the request); after it, :func:`charge` books prompt +
answer tokens, once per reference (``reservations.settle``: by the gateway, for every token it generated).
An anonymous visitor is counted by browser session *and* by IP address, so clearing cookies does not reset
the quota.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model

from portal.generation.requesters import Requester
from portal.ledger import spending as ledger


class OutOfCredits(Exception):
    """Nothing left to pay for another answer."""


def anonymous_keys(requester: Requester, ip: str) -> list[str]:
    """What an anonymous requester's quota is counted by: its session and its address."""
    return [k for k in (requester.session_key, f"ip:{ip}" if ip else "") if k]


def tokens_allowed(requester: Requester, ip: str) -> int:
    """Tokens (prompt + answer) the requester can still pay for; at least 1.

    Raises:
        OutOfCredits: none left, with what to do about it.
    """
    if requester.user_id is not None:
        left = ledger.tokens_affordable(get_user_model().objects.get(pk=requester.user_id))
        if left <= 0:
            raise OutOfCredits("you are out of credits: contribute a GPU to the swarm to earn more")
        return left
    left = min(ledger.anonymous_tokens_left(k) for k in anonymous_keys(requester, ip))
    if left <= 0:
        raise OutOfCredits("anonymous visitors get a small free quota per day and it is used up: log in or sign up")
    return left


def lock_payer(requester: Requester, ip: str) -> None:
    """Inside a transaction: serialize the admissions of one payer (see :func:`portal.ledger.spending.lock_payer`)."""
    if requester.user_id is not None:
        ledger.lock_payer(user=requester.user_id)
    else:
        ledger.lock_payer(keys=tuple(anonymous_keys(requester, ip)))


def charge(requester: Requester, ip: str, tokens: int, reference: str) -> None:
    """Book ``tokens`` for a finished (or stopped) answer; idempotent per ``reference``.

    When the balance no longer covers everything (the prompt was larger than expected), whatever is
    left is charged, so the next request is refused instead of this answer being free.
    """
    if tokens <= 0:
        return
    if requester.user_id is not None:
        user = get_user_model().objects.get(pk=requester.user_id)
        try:
            ledger.charge_usage(user, tokens=tokens, reference=reference)
        except ledger.InsufficientCredits:
            if (affordable := ledger.tokens_affordable(user)) > 0:
                ledger.charge_usage(user, tokens=affordable, reference=reference)
        return
    for key in anonymous_keys(requester, ip):
        left = ledger.anonymous_tokens_left(key)
        ledger.charge_anonymous(key, tokens=min(tokens, left), reference=f"{reference}:{key}")
