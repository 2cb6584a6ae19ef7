"""Linked traffic: receipts that look like one person paying their own node through a second account.

What the portal knows about an account and can compare: the account itself, its e-mail address and the
destinations its payouts were requested to. Two users are **linked** when they are the same user, share
an e-mail address once normalized (case, ``+tags``, dots of Gmail addresses), share an e-mail domain that
is not a public mail provider (``LEDGER_PUBLIC_EMAIL_DOMAINS``), or ever asked for payouts to the same
destination.

A receipt is **flagged** (:func:`receipt_flag`) when

- its payer (a user's client key) is linked to the node's owner, or
- it is gateway work (chat/API; the gateway does not tell the ledger who asked) and the node's owner, or
  an account linked to them, was charged for gateway usage within ``LEDGER_LINK_WINDOW`` seconds of the
  receipt: the owner was chatting while their node earned from the chat.

A flagged receipt is credited in full to the earner's held account: not payable until an admin clears it
(``portal.ledger.review.clear_receipt``), and then only its funded part.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q

from portal.ledger.models import Account, Entry, Payout, Receipt, Transaction


def normalized_email(email: str) -> str:
    """``email`` lowercased, without a ``+tag``, without dots in a Gmail local part ("" when not an address)."""
    local, at, domain = (email or "").strip().lower().rpartition("@")
    if not at or not local or not domain:
        return ""
    local = local.split("+", 1)[0]
    if domain in ("gmail.com", "googlemail.com"):
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"


def _private_domain(email: str) -> str:
    domain = normalized_email(email).rpartition("@")[2]
    public = {d.strip().lower() for d in settings.LEDGER_PUBLIC_EMAIL_DOMAINS}
    return "" if not domain or domain in public else domain


def _destination(text: str) -> str:
    return "".join((text or "").split()).lower()  # "DE00 1234" and "de001234" are one IBAN


def link_reason(a, b) -> str:
    """Why users ``a`` and ``b`` look like one person ("" when they do not)."""
    if a.pk == b.pk:
        return "same account"
    email_a, email_b = normalized_email(a.email), normalized_email(b.email)
    if email_a and email_a == email_b:
        return f"same e-mail address ({email_a})"
    domain = _private_domain(a.email)
    if domain and domain == _private_domain(b.email):
        return f"same e-mail domain ({domain})"
    destinations: dict[int, set[str]] = {a.pk: set(), b.pk: set()}
    for user_id, d in Payout.objects.filter(user_id__in=[a.pk, b.pk]).values_list("user_id", "destination"):
        destinations[user_id].add(_destination(d))
    return "same payout destination" if destinations[a.pk] & destinations[b.pk] else ""


def linked_users(user) -> dict[int, str]:
    """Every user linked to ``user`` (``user`` included, as "same account"): ``{user id: reason}``."""
    found = {user.pk: "same account"}
    candidates = Q()
    email = normalized_email(user.email)
    if email:
        local, _, domain = email.partition("@")
        candidates |= Q(email__istartswith=local) & Q(email__iendswith=domain)
        if _private_domain(user.email):
            candidates |= Q(email__iendswith="@" + domain)
    destinations = {_destination(d) for d in Payout.objects.filter(user=user).values_list("destination", flat=True)}
    if destinations:
        owners = Payout.objects.exclude(user=user).values_list("user_id", "destination")
        ids = {uid for uid, d in owners if _destination(d) in destinations}
        candidates |= Q(pk__in=ids)
    if candidates:
        for other in get_user_model().objects.filter(candidates).exclude(pk=user.pk)[:1000]:
            if reason := link_reason(user, other):
                found[other.pk] = reason
    return found


def receipt_flag(receipt: Receipt) -> str:
    """Why ``receipt`` looks like linked traffic ("" when it does not); see the module's docstring."""
    earner = receipt.earner
    payer_id = receipt.client_key.user_id
    if payer_id is not None:
        reason = link_reason(receipt.client_key.user, earner)
        return f"payer and node owner linked: {reason}" if reason else ""
    linked = linked_users(earner)
    window = dt.timedelta(seconds=float(settings.LEDGER_LINK_WINDOW))
    accounts = Account.objects.filter(kind=Account.Kind.USER, user_id__in=list(linked)).values("pk")
    used = (
        Entry.objects.filter(
            account_id__in=accounts,  # one query; the (account, created_at) index: few rows per linked account
            amount__lt=0,
            transaction__kind=Transaction.Kind.USAGE,
            created_at__gte=receipt.issued_at - window,
            created_at__lte=receipt.issued_at + window,
        )
        .values_list("account__user_id", flat=True)
        .first()
    )
    if used is None:
        return ""
    who = "the node's owner" if used == earner.pk else f"user #{used} ({linked[used]})"
    return f"gateway work while {who} used the gateway"
