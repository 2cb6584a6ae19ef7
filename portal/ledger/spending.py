"""Spending: users pay for chat and API tokens; anonymous visitors use a free quota.

The chat gateway and the OpenAI-compatible API call these after (or while) generating:

- :func:`charge_usage` debits a signed-in user ``tokens * LEDGER_CREDITS_PER_TOKEN`` credits into
  ``system:revenue``; idempotent per ``reference`` (charging the same reference twice charges once);
  raises :class:`InsufficientCredits` (nothing written) when the balance is short. Check
  :func:`tokens_affordable` first to cap ``max_tokens``.
- :func:`charge_anonymous` counts tokens against an anonymous visitor's quota
  (``LEDGER_ANONYMOUS_QUOTA_TOKENS`` per ``LEDGER_ANONYMOUS_QUOTA_WINDOW`` seconds, keyed by a digest of
  the session key or address); raises :class:`QuotaExceeded` (a kind of ``InsufficientCredits``) when the
  quota is used up. :func:`anonymous_tokens_left` says how many remain.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from portal.ledger.books import InsufficientCredits, balance_of, post, system_account, user_account
from portal.ledger.models import Account, AnonymousUsage, Transaction

__all__ = [
    "InsufficientCredits",
    "QuotaExceeded",
    "anonymous_tokens_left",
    "charge_anonymous",
    "charge_usage",
    "credits_for_tokens",
    "lock_payer",
    "tokens_affordable",
]


class QuotaExceeded(InsufficientCredits):
    """An anonymous visitor used up its free quota."""

    def __init__(self, left: int, needed: int):
        Exception.__init__(self, f"anonymous quota: {left} tokens left, {needed} needed (sign up for more)")
        self.account = None
        self.balance = left
        self.needed = needed


def credits_for_tokens(tokens: int) -> int:
    """What ``tokens`` chat/API tokens cost, in credits."""
    return int(tokens) * int(settings.LEDGER_CREDITS_PER_TOKEN)


def tokens_affordable(user) -> int:
    """How many tokens the user's balance pays for right now."""
    price = int(settings.LEDGER_CREDITS_PER_TOKEN)
    return balance_of(user) // price if price > 0 else 2**31


def charge_usage(user, *, tokens: int, reference: str) -> Transaction | None:
    """Debit ``user`` for ``tokens`` chat/API tokens.

    Args:
        user: the signed-in user who consumed the tokens.
        tokens: how many tokens (prompt and generated, as the caller counts them); 0 charges nothing.
        reference: unique per charge, e.g. ``"chat:<conversation>:<message>"``; a retry with the same
            reference returns the first charge and moves nothing.

    Returns:
        The ledger transaction, or ``None`` when nothing was due (``tokens == 0`` or a free price).

    Raises:
        InsufficientCredits: the balance is short; nothing is charged.
        ValueError: ``tokens`` is negative or ``reference`` is empty.
    """
    if tokens < 0:
        raise ValueError("tokens must be >= 0")
    if not reference:
        raise ValueError("a charge needs a reference (its idempotency key)")
    amount = credits_for_tokens(tokens)
    if amount == 0:
        return None
    return post(
        Transaction.Kind.USAGE,
        f"usage:{reference}",
        [(user_account(user), -amount), (system_account("system:revenue"), amount)],
        memo=f"{tokens} tokens",
    )


def _key_digest(key: str) -> str:
    return hashlib.sha256(f"anon:{key}".encode()).hexdigest()


def _lock_key(digest: str) -> None:
    # Serialize quota checks of one visitor across processes. SQLite already serializes writers
    # (IMMEDIATE transactions); PostgreSQL gets a transaction-scoped advisory lock.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int(digest[:15], 16)])


def lock_payer(user=None, keys: tuple[str, ...] = ()) -> None:
    """Inside a transaction: wait for, then hold until it ends, the lock of a payer (a user, or the
    anonymous ``keys``), so that checking what it can pay and holding it is one step for concurrent requests.
    """
    if user is not None:
        list(Account.objects.select_for_update().filter(pk=user_account(user).pk).values_list("pk"))
    for digest in sorted(_key_digest(k) for k in keys):
        _lock_key(digest)


def _used(digest: str) -> int:
    since = timezone.now() - timedelta(seconds=float(settings.LEDGER_ANONYMOUS_QUOTA_WINDOW))
    used = AnonymousUsage.objects.filter(key_digest=digest, created_at__gte=since).aggregate(n=Sum("tokens"))["n"]
    return used or 0


def anonymous_tokens_left(key: str) -> int:
    """Tokens an anonymous visitor (session key or address ``key``) may still use in the current window."""
    return max(0, int(settings.LEDGER_ANONYMOUS_QUOTA_TOKENS) - _used(_key_digest(key)))


def charge_anonymous(key: str, *, tokens: int, reference: str) -> int:
    """Count ``tokens`` against the anonymous visitor ``key``'s quota; return the tokens left after it.

    Idempotent per ``reference``. Raises :class:`QuotaExceeded` (nothing recorded) when fewer than
    ``tokens`` remain, and ``ValueError`` for negative ``tokens`` or an empty ``reference``/``key``.
    """
    if tokens < 0:
        raise ValueError("tokens must be >= 0")
    if not reference or not key:
        raise ValueError("an anonymous charge needs a key and a reference")
    digest = _key_digest(key)
    quota = int(settings.LEDGER_ANONYMOUS_QUOTA_TOKENS)
    with transaction.atomic():
        _lock_key(digest)
        if AnonymousUsage.objects.filter(reference=f"anon:{reference}").exists():
            return max(0, quota - _used(digest))
        left = quota - _used(digest)
        if tokens > left:
            raise QuotaExceeded(max(0, left), tokens)
        if tokens:
            try:
                with transaction.atomic():
                    AnonymousUsage.objects.create(key_digest=digest, tokens=tokens, reference=f"anon:{reference}")
            except IntegrityError:
                pass  # the same reference recorded concurrently
        return left - tokens
