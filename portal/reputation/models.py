"""Reputation state: each node's decayed evidence sums, its score history, audit evidence, suspensions."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from portal.swarm.models import Node


class NodeStanding(models.Model):
    """A node's running reputation: decayed positive/negative evidence per signal, as of ``updated_at``.

    ``signals`` maps a signal name (``audits``, ``steps``, ``uptime``, ``honesty``, ``reports``) to
    ``[positive, negative]`` evidence weights, already decayed to ``updated_at``. The score is derived
    from them (``portal.reputation.scoring``); ``score`` caches it for the tracker's peer list.
    """

    class Review(models.TextChoices):
        NONE = "", "not suspended"
        PENDING = "pending", "suspended, pending admin review"
        UPHELD = "upheld", "suspension upheld (node banned)"
        LIFTED = "lifted", "suspension lifted by an admin"

    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="standing")
    signals = models.JSONField(default=dict)
    score = models.FloatField(default=0.5)
    updated_at = models.DateTimeField(default=timezone.now)
    uptime_at = models.DateTimeField(default=timezone.now)  # online time before this is already credited
    suspended = models.BooleanField(default=False)  # excluded from the peer list until an admin lifts it
    review = models.CharField(max_length=8, choices=Review.choices, default=Review.NONE, blank=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    suspension_reason = models.CharField(max_length=300, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["suspended", "review"])]

    def __str__(self) -> str:
        return f"standing of node #{self.node_id}: {self.score:.2f}"


class ScoreSnapshot(models.Model):
    """The score of a node at one moment: the reputation history charts and admins read."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="score_snapshots")
    at = models.DateTimeField(default=timezone.now)
    score = models.FloatField()
    reason = models.CharField(max_length=32, blank=True)  # what changed it: audit, steps, decay, ...

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["node", "at"])]

    def __str__(self) -> str:
        return f"node #{self.node_id} {self.score:.2f} at {self.at:%Y-%m-%d %H:%M:%S}"


class AuditEvidence(models.Model):
    """One piece of evidence about a node's outputs: an audit (passed or failed), a failed cheap check, a report.

    For an audit, ``detail`` keeps what makes it attributable: the audited node's signed step digest
    (session, position, input/output hashes, signature), the auditor's signed digest of the same
    computation, and the compared last-position rows; the portal checked both signatures before storing it.
    """

    class Kind(models.TextChoices):
        AUDIT = "audit", "audit (replayed on another node)"
        CHECK = "check", "cheap check (shape, finite, norm)"
        REPORT = "report", "user report"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="audit_evidence")
    created = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.AUDIT)
    passed = models.BooleanField()
    auditor = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="audits_performed")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    session_id = models.CharField(max_length=128, blank=True)
    position = models.PositiveIntegerField(null=True, blank=True)
    relative_error = models.FloatField(null=True, blank=True)  # ||out - ref|| / ||ref|| (spec §11.3)
    tolerance = models.FloatField(null=True, blank=True)
    signatures_verified = models.BooleanField(default=False)
    fingerprint = models.CharField(max_length=128, blank=True)  # the audited result's signature: one record each
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name_plural = "audit evidence"
        indexes = [models.Index(fields=["node", "-created"]), models.Index(fields=["node", "passed", "created"])]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "fingerprint"], condition=~models.Q(fingerprint=""), name="evidence_once_per_result"
            )
        ]

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"{self.kind} of node #{self.node_id} {verdict} at {self.created:%Y-%m-%d %H:%M:%S}"


class ClientReport(models.Model):
    """What one user reported about a node, and how much of it counted: the per-reporter caps sum these rows.

    A report counts only as far as the reporter's own dealings with the node allow (receipts the node
    countersigned for the reporter's client key), within per-reporter caps per window, scaled by the
    reporter's standing (``portal.reputation.reporting``). Kept as evidence of who said what.
    """

    class Kind(models.TextChoices):
        STEPS = "steps", "steps served / failed"
        USER = "user", "user report of bad output"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="client_reports")
    reporter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.STEPS)
    ok = models.PositiveIntegerField(default=0)  # as reported
    failed = models.PositiveIntegerField(default=0)
    ok_counted = models.PositiveIntegerField(default=0)  # after the caps
    failed_counted = models.PositiveIntegerField(default=0)
    speed_counted = models.BooleanField(default=False)  # the measured throughput was scored
    weight = models.FloatField(default=0.0)  # the reporter's standing when it reported, in [0, 1]

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["node", "reporter", "created"])]

    def __str__(self) -> str:
        return (
            f"{self.kind} report on node #{self.node_id} by user #{self.reporter_id} at {self.created:%Y-%m-%d %H:%M}"
        )
