"""Payouts: owners ask to be paid what they earned; admins approve, reject or hold; every step audited.

Only *earned* credits can leave the swarm (the funded parts of settled receipts, escrow releases and
reviewed held credits, less what earlier payouts took): the starting grant, deposits and held earnings
stay inside. :func:`payable` is that amount, capped by the balance.

Four eyes: nobody decides their own payout. :func:`approve`, :func:`reject` and :func:`hold` refuse an
admin who is the payout's owner (``own_payout``), so an admin account alone cannot pay itself out.

State machine (each transition locks the payout row; a finished payout cannot move again)::

    requested --hold--> held
    requested|held --approve(external_reference)--> approved   credits: in review -> paid out
    requested|held --reject(reason)--> rejected                credits: in review -> back to the owner
"""

from __future__ import annotations

import csv
import io

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from portal.ledger.books import balance, post, system_account, user_account
from portal.ledger.models import Entry, Payout, PayoutEvent, Transaction


class PayoutRefused(ValueError):
    """The request or the review step is not allowed; ``code`` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def earned(user) -> int:
    """Credits the user earned by serving (settled receipts and escrow releases into their account)."""
    account = user_account(user)
    kinds = [Transaction.Kind.RECEIPT, Transaction.Kind.ESCROW_RELEASE, Transaction.Kind.HELD_RELEASE]
    total = Entry.objects.filter(account=account, amount__gt=0, transaction__kind__in=kinds).aggregate(s=Sum("amount"))
    return total["s"] or 0


def _paid_or_in_review(user) -> int:
    account = user_account(user)
    out = Entry.objects.filter(account=account, transaction__kind=Transaction.Kind.PAYOUT_REQUEST).aggregate(
        s=Sum("amount")
    )["s"]
    back = Entry.objects.filter(account=account, transaction__kind=Transaction.Kind.PAYOUT_RETURN).aggregate(
        s=Sum("amount")
    )["s"]
    return -(out or 0) - (back or 0)


def payable(user) -> int:
    """What the user may request now: earned credits not yet paid out or in review, within the balance."""
    return max(0, min(balance(user_account(user)), earned(user) - _paid_or_in_review(user)))


def request_payout(user, amount: int, destination: str) -> Payout:
    """Ask for ``amount`` earned credits to be paid to ``destination``; the credits go into review at once.

    Raises:
        PayoutRefused: ``too_small`` (under ``LEDGER_MIN_PAYOUT``), ``not_payable`` (more than
            :func:`payable`), ``no_destination``.
    """
    amount = int(amount)
    destination = (destination or "").strip()
    if not destination:
        raise PayoutRefused("no_destination", "say where to pay (an account or wallet reference)")
    if amount < settings.LEDGER_MIN_PAYOUT:
        raise PayoutRefused("too_small", f"the smallest payout is {settings.LEDGER_MIN_PAYOUT} credits")
    account = user_account(user)
    with transaction.atomic():
        # Lock the account first so two requests cannot both pass the payable() check.
        type(account).objects.select_for_update().get(pk=account.pk)
        can = payable(user)
        if amount > can:
            raise PayoutRefused("not_payable", f"{can} earned credits can be paid out now, not {amount}")
        payout = Payout.objects.create(user=user, amount=amount, destination=destination[:200])
        post(
            Transaction.Kind.PAYOUT_REQUEST,
            f"payout:{payout.pk}:request",
            [(account, -amount), (system_account("system:payouts-in-review"), amount)],
            memo=f"payout #{payout.pk} requested",
        )
        PayoutEvent.objects.create(payout=payout, actor=user, action="requested", detail=f"{amount} credits")
    return payout


def _locked_open(payout: Payout, admin) -> Payout:
    locked = Payout.objects.select_for_update().get(pk=payout.pk)
    if getattr(admin, "pk", None) is None or admin.pk == locked.user_id:
        raise PayoutRefused("own_payout", "four eyes: a payout is decided by an admin other than its owner")
    if not locked.open:
        raise PayoutRefused("closed", f"payout #{locked.pk} is {locked.status} already")
    return locked


def approve(payout: Payout, admin, external_reference: str) -> Payout:
    """Approve: the money was sent outside the swarm under ``external_reference``.

    Raises:
        PayoutRefused: ``no_reference``, ``own_payout`` (``admin`` is the owner) or ``closed`` (decided already).
    """
    external_reference = (external_reference or "").strip()
    if not external_reference:
        raise PayoutRefused("no_reference", "record the external payment's reference")
    with transaction.atomic():
        p = _locked_open(payout, admin)
        post(
            Transaction.Kind.PAYOUT_PAID,
            f"payout:{p.pk}:paid",
            [(system_account("system:payouts-in-review"), -p.amount), (system_account("system:paid-out"), p.amount)],
            memo=f"payout #{p.pk} paid: {external_reference}"[:300],
        )
        return _decide(p, admin, Payout.Status.APPROVED, external_reference=external_reference[:200])


def reject(payout: Payout, admin, reason: str) -> Payout:
    """Reject with ``reason``: the credits return to the owner.

    Raises:
        PayoutRefused: ``no_reason``, ``own_payout`` or ``closed``.
    """
    reason = (reason or "").strip()
    if not reason:
        raise PayoutRefused("no_reason", "say why the payout is rejected")
    with transaction.atomic():
        p = _locked_open(payout, admin)
        post(
            Transaction.Kind.PAYOUT_RETURN,
            f"payout:{p.pk}:return",
            [(system_account("system:payouts-in-review"), -p.amount), (user_account(p.user), p.amount)],
            memo=f"payout #{p.pk} rejected: {reason}"[:300],
        )
        return _decide(p, admin, Payout.Status.REJECTED, reason=reason[:500])


def hold(payout: Payout, admin, reason: str = "") -> Payout:
    """Put the payout on hold (credits stay in review).

    Raises:
        PayoutRefused: ``own_payout`` or ``closed``.
    """
    with transaction.atomic():
        p = _locked_open(payout, admin)
        return _decide(p, admin, Payout.Status.HELD, reason=(reason or "").strip()[:500])


def _decide(p: Payout, admin, status: str, **fields) -> Payout:
    p.status = status
    p.reviewed_by = admin
    p.reviewed_at = timezone.now()
    for name, value in fields.items():
        setattr(p, name, value)
    p.save()
    detail = fields.get("external_reference") or fields.get("reason") or ""
    PayoutEvent.objects.create(payout=p, actor=admin, action=status, detail=detail)
    return p


def approved_csv(payouts=None) -> str:
    """CSV of approved payouts: id, user, email, amount, destination, external reference, reviewer, dates."""
    payouts = payouts if payouts is not None else Payout.objects.filter(status=Payout.Status.APPROVED)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["payout", "user", "email", "credits", "destination", "external_reference", "approved_by", "requested_at",
         "approved_at"]
    )  # fmt: skip
    for p in payouts.filter(status=Payout.Status.APPROVED).select_related("user", "reviewed_by").order_by("id"):
        writer.writerow(
            [
                p.pk,
                p.user.username,
                p.user.email,
                p.amount,
                _cell(p.destination),
                _cell(p.external_reference),
                p.reviewed_by.username if p.reviewed_by else "",
                p.requested_at.isoformat(),
                p.reviewed_at.isoformat() if p.reviewed_at else "",
            ]
        )
    return out.getvalue()


def _cell(text: str) -> str:
    # A user-typed value starting with = + - @ would run as a formula in a spreadsheet: neutralize it.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
