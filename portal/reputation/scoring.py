"""Reputation scoring: signals about a node become decayed evidence, evidence becomes a score in [0, 1].

The formula (documented in ``portal/README.md``, "Reputation"): every signal adds *positive* (``r``) or
*negative* (``s``) evidence weight; all weight decays with a half-life ``REPUTATION_HALF_LIFE``; the score
is a beta-reputation mean pulled towards a prior ``P`` with weight ``W``::

    score = (r + P * W) / (r + s + W)        r = sum of decayed positive weight, s = negative

A new node (no evidence) scores ``P``. A suspended node scores 0 until an admin lifts the suspension.
Nodes under ``REPUTATION_THRESHOLD`` (or suspended) are left out of the clients' peer list.

Views and tasks call these functions; each runs in one transaction with the node's standing locked,
so concurrent reports never lose an update.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portal.reputation.models import AuditEvidence, NodeStanding, ScoreSnapshot
from portal.swarm import tracker
from portal.swarm.models import Node

# Evidence weight of one observation, per signal: (positive when good, negative when bad).
# An audit failure is a node caught returning wrong activations: 20 passes' worth of weight.
AUDIT_PASS, AUDIT_FAIL = 1.0, 20.0
CHECK_FAIL = 5.0  # a failed cheap check (NaN, wrong shape, absurd norm): malformed output, signed
STEP_OK, STEP_FAIL = 0.02, 0.5  # per step a client reports served / failed (unreachable, timeout, error)
UPTIME_PER_HOUR = 0.5  # online (heartbeats arriving) for an hour
HONEST_SPEED, DISHONEST_SPEED = 0.2, 1.0  # measured throughput >= / < HONESTY_RATIO x announced
HONESTY_RATIO = 0.33
USER_REPORT = 2.0  # a user's report of bad output (one per user, node and day counts)
SIGNALS = ("audits", "checks", "steps", "uptime", "honesty", "reports")


def _decay_factor(elapsed: timedelta) -> float:
    seconds = max(elapsed.total_seconds(), 0.0)
    return math.pow(0.5, seconds / settings.REPUTATION_HALF_LIFE)


def _decayed(signals: dict, elapsed: timedelta) -> dict[str, list[float]]:
    factor = _decay_factor(elapsed)
    return {name: [pos * factor, neg * factor] for name, (pos, neg) in signals.items()}


def score_of(signals: dict) -> float:
    """The score of (already decayed) evidence ``{signal: [positive, negative]}``; no evidence gives the prior."""
    pos = sum(p for p, _ in signals.values())
    neg = sum(n for _, n in signals.values())
    prior, weight = settings.REPUTATION_PRIOR, settings.REPUTATION_PRIOR_WEIGHT
    return (pos + prior * weight) / (pos + neg + weight)


def _effective(standing: NodeStanding, signals: dict) -> float:
    return 0.0 if standing.suspended else score_of(signals)


def node_score(node: Node | int, now: datetime | None = None) -> float:
    """A node's reputation in [0, 1] now: the prior for a new node, 0 while it is suspended.

    Args:
        node: a ``Node`` or its id.
        now: the moment to decay the evidence to (default: now).
    """
    now = now or timezone.now()
    node_id = node if isinstance(node, int) else node.pk
    standing = NodeStanding.objects.filter(node_id=node_id).first()
    if standing is None:
        return float(settings.REPUTATION_PRIOR)
    return _effective(standing, _decayed(standing.signals, now - standing.updated_at))


def score_history(node: Node | int, since: datetime | None = None) -> list[tuple[datetime, float]]:
    """``(moment, score)`` pairs of a node, oldest first (every change and every decay run)."""
    node_id = node if isinstance(node, int) else node.pk
    rows = ScoreSnapshot.objects.filter(node_id=node_id)
    if since is not None:
        rows = rows.filter(at__gte=since)
    return list(rows.order_by("at", "id").values_list("at", "score"))


def record_signal(
    node: Node | int, signal: str, positive: float = 0.0, negative: float = 0.0, now: datetime | None = None
) -> float:
    """Add evidence to one signal of a node; returns the node's new score.

    Raises:
        ValueError: unknown signal or negative weight.
    """
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}")
    if positive < 0 or negative < 0:
        raise ValueError("evidence weights are non-negative")
    now = now or timezone.now()
    node_id = node if isinstance(node, int) else node.pk
    with transaction.atomic():
        standing = _locked_standing(node_id, now)
        signals = _decayed(standing.signals, now - standing.updated_at)
        pos, neg = signals.get(signal, [0.0, 0.0])
        signals[signal] = [pos + positive, neg + negative]
        return _save(standing, signals, now, reason=signal)


def _locked_standing(node_id: int, now: datetime) -> NodeStanding:
    NodeStanding.objects.get_or_create(node_id=node_id, defaults={"updated_at": now, "uptime_at": now})
    return NodeStanding.objects.select_for_update().get(node_id=node_id)


def _save(standing: NodeStanding, signals: dict, now: datetime, reason: str) -> float:
    standing.signals = signals
    standing.updated_at = now
    standing.score = _effective(standing, signals)
    standing.save()
    ScoreSnapshot.objects.create(node_id=standing.node_id, at=now, score=standing.score, reason=reason)
    return standing.score


def record_audit(
    node: Node,
    passed: bool,
    *,
    kind: str = AuditEvidence.Kind.AUDIT,
    auditor: Node | None = None,
    reporter=None,
    session_id: str = "",
    position: int | None = None,
    relative_error: float | None = None,
    tolerance: float | None = None,
    signatures_verified: bool = False,
    fingerprint: str = "",
    detail: dict | None = None,
    now: datetime | None = None,
) -> AuditEvidence:
    """Store one piece of audit evidence, update the node's score, and auto-suspend on repeated failures.

    ``REPUTATION_SUSPEND_FAILURES`` failed audits or checks within ``REPUTATION_SUSPEND_WINDOW`` suspend the
    node (left out of the peer list, score 0) pending an admin's review.
    """
    now = now or timezone.now()
    with transaction.atomic():
        evidence = AuditEvidence.objects.create(
            node=node,
            created=now,
            kind=kind,
            passed=passed,
            auditor=auditor,
            reporter=reporter,
            session_id=session_id,
            position=position,
            relative_error=relative_error,
            tolerance=tolerance,
            signatures_verified=signatures_verified,
            fingerprint=fingerprint,
            detail=detail or {},
        )
        if kind == AuditEvidence.Kind.CHECK:
            record_signal(node, "checks", negative=0.0 if passed else CHECK_FAIL, now=now)
        else:
            record_signal(node, "audits", *((AUDIT_PASS, 0.0) if passed else (0.0, AUDIT_FAIL)), now=now)
        if not passed:
            _maybe_suspend(node, now)
    return evidence


def _maybe_suspend(node: Node, now: datetime) -> None:
    standing = NodeStanding.objects.select_for_update().get(node=node)
    if standing.suspended:
        return
    since = now - timedelta(seconds=settings.REPUTATION_SUSPEND_WINDOW)
    if standing.review == NodeStanding.Review.LIFTED and standing.reviewed_at and standing.reviewed_at > since:
        since = standing.reviewed_at  # an admin cleared the node: only failures after that count
    failures = AuditEvidence.objects.filter(
        node=node, passed=False, created__gte=since, kind__in=[AuditEvidence.Kind.AUDIT, AuditEvidence.Kind.CHECK]
    ).count()
    if failures < settings.REPUTATION_SUSPEND_FAILURES:
        return
    standing.suspended = True
    standing.review = NodeStanding.Review.PENDING
    standing.suspended_at = now
    standing.suspension_reason = f"{failures} failed audits within {settings.REPUTATION_SUSPEND_WINDOW:.0f} s"
    _save(standing, _decayed(standing.signals, now - standing.updated_at), now, reason="suspended")


def record_steps(
    node: Node, ok: int, failed: int, measured_throughput: float | None = None, now: datetime | None = None
) -> float:
    """A client's report of steps a node served (``ok``) or failed, and optionally the speed it measured.

    The measured speed is compared to the node's announced ``throughput``: a node claiming more than
    ``1 / HONESTY_RATIO`` times what clients measure loses reputation (it would attract traffic it cannot serve).
    """
    now = now or timezone.now()
    with transaction.atomic():
        score = record_signal(
            node, "steps", positive=STEP_OK * max(ok, 0), negative=STEP_FAIL * max(failed, 0), now=now
        )
        if measured_throughput is not None and node.throughput > 0:
            honest = measured_throughput >= HONESTY_RATIO * node.throughput
            score = record_signal(
                node, "honesty", *((HONEST_SPEED, 0.0) if honest else (0.0, DISHONEST_SPEED)), now=now
            )
    return score


def record_user_report(node: Node, reporter, reason: str, now: datetime | None = None) -> AuditEvidence | None:
    """A signed-in user reports bad output from a node; one report per user, node and day counts.

    Returns the evidence stored, or None when this user already reported this node today.
    """
    now = now or timezone.now()
    with transaction.atomic():
        recent = AuditEvidence.objects.filter(
            node=node, reporter=reporter, kind=AuditEvidence.Kind.REPORT, created__gte=now - timedelta(days=1)
        )
        if recent.exists():
            return None
        evidence = AuditEvidence.objects.create(
            node=node,
            created=now,
            kind=AuditEvidence.Kind.REPORT,
            passed=False,
            reporter=reporter,
            detail={"reason": reason[:1000]},
        )
        record_signal(node, "reports", negative=USER_REPORT, now=now)
    return evidence


def decay_all(now: datetime | None = None) -> int:
    """The periodic run: credit online time, decay every standing to ``now``, record a history point.

    Returns how many standings it updated. Every online node gets a standing here, so new nodes
    have a history from their first hour.
    """
    now = now or timezone.now()
    online = set(Node.objects.filter(state=Node.State.ONLINE).values_list("pk", flat=True))
    for node_id in online:
        NodeStanding.objects.get_or_create(node_id=node_id, defaults={"updated_at": now, "uptime_at": now})
    count = 0
    for pk in NodeStanding.objects.values_list("pk", flat=True):
        with transaction.atomic():
            standing = NodeStanding.objects.select_for_update().get(pk=pk)
            signals = _decayed(standing.signals, now - standing.updated_at)
            if standing.node_id in online:
                hours = max((now - standing.uptime_at).total_seconds(), 0.0) / 3600
                pos, neg = signals.get("uptime", [0.0, 0.0])
                signals["uptime"] = [pos + UPTIME_PER_HOUR * hours, neg]
            standing.uptime_at = now
            _save(standing, signals, now, reason="decay")
            count += 1
    return count


def prune_history(now: datetime | None = None) -> int:
    """Drop score history older than ``REPUTATION_HISTORY``; returns rows deleted."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.REPUTATION_HISTORY)
    return ScoreSnapshot.objects.filter(at__lt=cutoff).delete()[0]


def trusted(nodes):
    """``nodes`` (a Node queryset) without suspended nodes and nodes scoring under the threshold.

    Nodes without a standing yet count as the prior (kept when the prior is at or above the threshold).
    """
    low = NodeStanding.objects.filter(score__lt=settings.REPUTATION_THRESHOLD).values("node_id")
    suspended = NodeStanding.objects.filter(suspended=True).values("node_id")
    nodes = nodes.exclude(pk__in=suspended).exclude(pk__in=low)
    if settings.REPUTATION_PRIOR < settings.REPUTATION_THRESHOLD:
        nodes = nodes.filter(standing__isnull=False)
    return nodes


def threshold() -> float:
    """The score under which nodes leave the peer list (``REPUTATION_THRESHOLD``)."""
    return float(settings.REPUTATION_THRESHOLD)


def with_scores(nodes):
    """``nodes`` annotated with ``reputation``: the cached score, the prior for nodes without a standing."""
    from django.db.models import FloatField, Value
    from django.db.models.functions import Coalesce

    return nodes.annotate(
        reputation=Coalesce("standing__score", Value(float(settings.REPUTATION_PRIOR)), output_field=FloatField())
    )


def lift_suspension(standing: NodeStanding, admin, now: datetime | None = None) -> None:
    """An admin looked at the evidence and clears the node: back in the peer list with its evidence score."""
    now = now or timezone.now()
    with transaction.atomic():
        standing = NodeStanding.objects.select_for_update().get(pk=standing.pk)
        standing.suspended = False
        standing.review = NodeStanding.Review.LIFTED
        standing.reviewed_by, standing.reviewed_at = admin, now
        _save(standing, _decayed(standing.signals, now - standing.updated_at), now, reason="lifted")


def uphold_suspension(standing: NodeStanding, admin, now: datetime | None = None) -> None:
    """An admin confirms the suspension: the node stays suspended and is banned from the tracker."""
    now = now or timezone.now()
    with transaction.atomic():
        standing = NodeStanding.objects.select_for_update().get(pk=standing.pk)
        standing.suspended = True
        standing.review = NodeStanding.Review.UPHELD
        standing.reviewed_by, standing.reviewed_at = admin, now
        standing.save()
        tracker.set_banned(Node.objects.filter(pk=standing.node_id), True)
