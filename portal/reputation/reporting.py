"""Client reports about nodes, bounded: only reporters who dealt with a node, capped, weighted by standing.

A step report (``ok`` / ``failed`` / measured speed) or a user's "bad output" report is a claim nobody can
check, so it must not let a stranger with a free account rewrite a node's reputation (#17 finding 6):

1. **Dealings.** A report counts only if the reporter had sessions with the node in the last
   ``REPUTATION_REPORT_WINDOW`` seconds: usage receipts the node countersigned for the reporter's own
   client key (the caller, which may read the ledger, passes them in as :class:`Dealings`). Nobody can make a
   node sign a receipt it did not serve, so an account with no sessions with a node moves nothing.
   A node's owner never reports on their own node.
2. **Caps.** Per reporter and node and window: at most ``REPUTATION_REPORT_MAX_OK`` served steps (and no more
   than the tokens the receipts show), ``REPUTATION_REPORT_MAX_FAILED`` failed steps, one speed measurement
   and one user report. Repeating a report adds nothing once the caps are reached.
3. **Standing.** What counts is scaled by the reporter's weight in [0, 1] (:func:`reporter_weight`): a new
   account weighs little, growing to 1 over ``REPUTATION_REPORTER_MATURITY`` seconds; staff weigh 1.

Each report is kept as a :class:`~portal.reputation.models.ClientReport` row (what was said, what counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from portal.accounts.verification import is_verified
from portal.reputation import scoring
from portal.reputation.models import AuditEvidence, ClientReport
from portal.swarm.models import Node

MIN_WEIGHT = 0.05  # a brand-new account still weighs something: one honest voice is not nothing


class ReportRefused(Exception):
    """A report that cannot count at all; ``code`` names why (``own_node``, ``no_dealings``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Dealings:
    """The reporter's countersigned work with one node within the window (from the ledger's receipts)."""

    sessions: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class Counted:
    """How much of a step report counted, and the node's score afterwards."""

    ok: int
    failed: int
    speed: bool
    weight: float
    score: float


def window_start(now: datetime | None = None) -> datetime:
    """The start of the current reporting window (``REPUTATION_REPORT_WINDOW`` seconds back)."""
    return (now or timezone.now()) - timedelta(seconds=settings.REPUTATION_REPORT_WINDOW)


def reporter_weight(user, now: datetime | None = None) -> float:
    """How much a user's word weighs, in [MIN_WEIGHT, 1]: grows linearly with the account's age; staff 1.

    An account that has not verified its e-mail address weighs nothing (``accounts`` exposes the flag).
    """
    if user.is_staff:
        return 1.0
    if not is_verified(user):
        return 0.0
    age = ((now or timezone.now()) - user.date_joined).total_seconds()
    return min(1.0, max(MIN_WEIGHT, age / settings.REPUTATION_REPORTER_MATURITY))


def _check_reporter(node: Node, reporter, dealings: Dealings) -> None:
    if node.owner_id == reporter.pk:
        raise ReportRefused("own_node", "owners cannot report on their own nodes")
    if dealings.sessions < 1:
        days = settings.REPUTATION_REPORT_WINDOW / 86400
        raise ReportRefused(
            "no_dealings", f"you had no sessions with node {node.pk} in the last {days:g} days (no receipts)"
        )


def record_steps(
    node: Node,
    reporter,
    ok: int,
    failed: int,
    measured_throughput: float | None,
    dealings: Dealings,
    now: datetime | None = None,
) -> Counted:
    """Score what a client saw a node serve and fail, within the reporter's caps and weight.

    Raises:
        ReportRefused: the reporter owns the node, or had no sessions with it in the window.
    """
    _check_reporter(node, reporter, dealings)
    now = now or timezone.now()
    weight = reporter_weight(reporter, now)
    with transaction.atomic():
        # One reporter's reports on one node run one at a time, so two concurrent ones cannot both fit a cap.
        Node.objects.select_for_update().filter(pk=node.pk).first()
        so_far = ClientReport.objects.filter(
            node=node, reporter=reporter, kind=ClientReport.Kind.STEPS, created__gte=window_start(now)
        ).aggregate(ok=Sum("ok_counted"), failed=Sum("failed_counted"), speed=Count("pk", filter=Q(speed_counted=True)))
        ok_room = min(settings.REPUTATION_REPORT_MAX_OK, dealings.tokens) - (so_far["ok"] or 0)
        failed_room = settings.REPUTATION_REPORT_MAX_FAILED - (so_far["failed"] or 0)
        ok_counted, failed_counted = max(0, min(ok, ok_room)), max(0, min(failed, failed_room))
        speed = measured_throughput is not None and node.throughput > 0 and not so_far["speed"]
        ClientReport.objects.create(
            node=node,
            reporter=reporter,
            created=now,
            kind=ClientReport.Kind.STEPS,
            ok=ok,
            failed=failed,
            ok_counted=ok_counted,
            failed_counted=failed_counted,
            speed_counted=speed,
            weight=weight,
        )
        score = scoring.node_score(node, now)
        if weight > 0 and (ok_counted or failed_counted):
            positive, negative = scoring.STEP_OK * ok_counted, scoring.STEP_FAIL * failed_counted
            score = scoring.record_signal(node, "steps", weight * positive, weight * negative, now=now)
        if weight > 0 and speed:
            honest = measured_throughput >= scoring.HONESTY_RATIO * node.throughput
            pos, neg = (scoring.HONEST_SPEED, 0.0) if honest else (0.0, scoring.DISHONEST_SPEED)
            score = scoring.record_signal(node, "honesty", weight * pos, weight * neg, now=now)
    return Counted(ok_counted, failed_counted, speed, weight, score)


def record_user_report(
    node: Node, reporter, reason: str, dealings: Dealings, now: datetime | None = None
) -> AuditEvidence | None:
    """A user reports bad output from a node they used: stored as evidence, scored by their weight.

    Returns:
        The evidence stored, or None when this user already reported this node within the window.

    Raises:
        ReportRefused: the reporter owns the node, or had no sessions with it in the window.
    """
    _check_reporter(node, reporter, dealings)
    now = now or timezone.now()
    weight = reporter_weight(reporter, now)
    with transaction.atomic():
        Node.objects.select_for_update().filter(pk=node.pk).first()
        recent = ClientReport.objects.filter(
            node=node, reporter=reporter, kind=ClientReport.Kind.USER, created__gte=window_start(now)
        )
        if recent.exists():
            return None
        ClientReport.objects.create(
            node=node, reporter=reporter, created=now, kind=ClientReport.Kind.USER, weight=weight
        )
        evidence = AuditEvidence.objects.create(
            node=node,
            created=now,
            kind=AuditEvidence.Kind.REPORT,
            passed=False,
            reporter=reporter,
            detail={"reason": reason[:1000], "weight": weight},
        )
        if weight > 0:
            scoring.record_signal(node, "reports", negative=weight * scoring.USER_REPORT, now=now)
    return evidence
