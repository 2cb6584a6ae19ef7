"""What an answer costs: signed-in users pay credits (``portal.ledger``), anonymous visitors use a free quota.

Before a generation, :func:`tokens_allowed` says how many tokens the requester can still pay for (the
answer's ``max_new_tokens`` is capped to it); after it, :func:`charge` books prompt + answer tokens,
once per request id. An anonymous visitor is counted by browser session *and* by IP address, so
clearing cookies does not reset the quota.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model

from portal.chat.conversations import Owner
from portal.ledger import spending as ledger


class OutOfCredits(Exception):
    """Nothing left to pay for another answer."""


def _anonymous_keys(owner: Owner, ip: str) -> list[str]:
    return [k for k in (owner.session_key, f"ip:{ip}" if ip else "") if k]


def tokens_allowed(owner: Owner, ip: str) -> int:
    """Tokens (prompt + answer) the requester can still pay for; at least 1.

    Raises:
        OutOfCredits: none left, with what to do about it.
    """
    if owner.user_id is not None:
        left = ledger.tokens_affordable(get_user_model().objects.get(pk=owner.user_id))
        if left <= 0:
            raise OutOfCredits("you are out of credits: contribute a GPU to the swarm to earn more")
        return left
    left = min(ledger.anonymous_tokens_left(k) for k in _anonymous_keys(owner, ip))
    if left <= 0:
        raise OutOfCredits("anonymous visitors get a small free quota per day and it is used up: log in or sign up")
    return left


def charge(owner: Owner, ip: str, tokens: int, reference: str) -> None:
    """Book ``tokens`` for a finished (or stopped) answer; idempotent per ``reference``.

    When the balance no longer covers everything (the prompt was larger than expected), whatever is
    left is charged, so the next request is refused instead of this answer being free.
    """
    if tokens <= 0:
        return
    if owner.user_id is not None:
        user = get_user_model().objects.get(pk=owner.user_id)
        try:
            ledger.charge_usage(user, tokens=tokens, reference=reference)
        except ledger.InsufficientCredits:
            if (affordable := ledger.tokens_affordable(user)) > 0:
                ledger.charge_usage(user, tokens=affordable, reference=reference)
        return
    for key in _anonymous_keys(owner, ip):
        left = ledger.anonymous_tokens_left(key)
        ledger.charge_anonymous(key, tokens=min(tokens, left), reference=f"{reference}:{key}")
