"""Reputation API: clients report audit evidence, step outcomes and bad output; owners read their nodes' standing.

| method, path | who |
| --- | --- |
| ``POST /api/v1/reputation/evidence/`` | a signed-in user or API key (a client that audited a node) |
| ``POST /api/v1/reputation/steps/`` | a user with receipts from the node (else 403 ``no_dealings``) |
| ``POST /api/v1/reputation/nodes/{id}/report/`` | a user with receipts from the node (else 403) |
| ``GET /api/v1/reputation/nodes/{id}/`` | the node's owner or staff (others: 404) |
"""

from __future__ import annotations

from django.db.models import Count, Sum
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.ledger.models import Receipt
from portal.reputation import reporting, scoring
from portal.reputation.evidence import AuditReport, EvidenceError, record_report
from portal.reputation.models import AuditEvidence, NodeStanding
from portal.swarm.models import Node

_ERROR = inline_serializer("ReputationError", {"error": serializers.CharField(), "detail": serializers.CharField()})


class EvidenceSerializer(serializers.Serializer):
    """An audit report (``swarmnode.client.audit.Evidence.to_json``)."""

    node = serializers.IntegerField(min_value=1)
    auditor = serializers.IntegerField(min_value=1)
    passed = serializers.BooleanField()
    session_id = serializers.CharField(max_length=128, allow_blank=True)
    position = serializers.IntegerField(min_value=0, max_value=1 << 30)
    relative_error = serializers.FloatField(required=False)
    tolerance = serializers.FloatField(required=False)
    claim = serializers.DictField()
    reference = serializers.DictField()
    detail = serializers.DictField(required=False)

    def to_report(self) -> AuditReport:
        """The validated report."""
        d = self.validated_data
        return AuditReport(
            d["node"], d["auditor"], d["passed"], d["session_id"], d["position"], d["claim"], d["reference"]
        )


class StepsSerializer(serializers.Serializer):
    """Steps a client saw a node serve or fail, and the speed it measured."""

    node = serializers.IntegerField(min_value=1)
    ok = serializers.IntegerField(min_value=0, max_value=100_000)
    failed = serializers.IntegerField(min_value=0, max_value=10_000)
    measured_throughput = serializers.FloatField(min_value=0.0, max_value=1e9, required=False)


class UserReportSerializer(serializers.Serializer):
    """Why the user thinks the node's output is bad."""

    reason = serializers.CharField(max_length=1000)


class EvidenceOut(serializers.ModelSerializer):
    """Evidence as the node's owner sees it."""

    class Meta:
        model = AuditEvidence
        fields = ["id", "created", "kind", "passed", "auditor", "session_id", "position", "relative_error", "tolerance"]


def _error(exc: EvidenceError) -> Response:
    return Response({"error": exc.code, "detail": exc.message}, status=exc.status)


class ReportEvidence(APIView):
    """A client reports an audit of a node: both nodes' signed results; the portal checks and scores it."""

    permission_classes = [IsAuthenticated]

    @extend_schema(request=EvidenceSerializer, responses={201: EvidenceOut, 400: _ERROR, 404: _ERROR, 409: _ERROR})
    def post(self, request):
        ser = EvidenceSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            evidence = record_report(ser.to_report(), request.user)
        except EvidenceError as exc:
            return _error(exc)
        return Response(EvidenceOut(evidence).data, status=status.HTTP_201_CREATED)


def dealings(user, node: Node) -> reporting.Dealings:
    """The user's sessions with ``node`` in the reporting window: receipts the node countersigned for the
    user's own client keys (pending or settled; refused ones do not count)."""
    rows = Receipt.objects.filter(node=node, client_key__user=user, issued_at__gte=reporting.window_start()).exclude(
        status=Receipt.Status.REFUSED
    )
    totals = rows.aggregate(sessions=Count("session_id", distinct=True), tokens=Sum("tokens"))
    return reporting.Dealings(sessions=totals["sessions"] or 0, tokens=totals["tokens"] or 0)


def _refused(exc: reporting.ReportRefused) -> Response:
    return Response({"error": exc.code, "detail": exc.message}, status=status.HTTP_403_FORBIDDEN)


class ReportSteps(APIView):
    """A client reports steps a node served and failed (step success rate, speed honesty).

    Counts only for a reporter with receipts from the node, within per-reporter caps, scaled by the
    reporter's standing (``portal/reputation/reporting.py``); the reply says what counted.
    """

    permission_classes = [IsAuthenticated]
    throttle_scope = "reports"

    @extend_schema(
        request=StepsSerializer,
        responses={
            200: inline_serializer(
                "StepsCounted",
                {
                    "score": serializers.FloatField(),
                    "counted": serializers.DictField(),
                    "weight": serializers.FloatField(),
                },
            ),
            403: _ERROR,
        },
    )
    def post(self, request):
        ser = StepsSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        d = ser.validated_data
        node = get_object_or_404(Node, pk=d["node"])
        try:
            counted = reporting.record_steps(
                node, request.user, d["ok"], d["failed"], d.get("measured_throughput"), dealings(request.user, node)
            )
        except reporting.ReportRefused as exc:
            return _refused(exc)
        return Response(
            {
                "score": counted.score,
                "counted": {"ok": counted.ok, "failed": counted.failed, "speed": counted.speed},
                "weight": counted.weight,
            }
        )


class ReportNode(APIView):
    """A user reports bad output from a node they used (one report per user, node and window counts)."""

    permission_classes = [IsAuthenticated]
    throttle_scope = "reports"

    @extend_schema(request=UserReportSerializer, responses={201: EvidenceOut, 200: EvidenceOut, 403: _ERROR})
    def post(self, request, pk: int):
        ser = UserReportSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        node = get_object_or_404(Node, pk=pk)
        try:
            evidence = reporting.record_user_report(
                node, request.user, ser.validated_data["reason"], dealings(request.user, node)
            )
        except reporting.ReportRefused as exc:
            return _refused(exc)
        if evidence is None:
            return Response({"detail": "already reported today"}, status=status.HTTP_200_OK)
        return Response(EvidenceOut(evidence).data, status=status.HTTP_201_CREATED)


class NodeReputation(APIView):
    """A node's score, signals, suspension, history and evidence: its owner and staff only (others 404)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        responses=inline_serializer(
            "NodeReputation",
            {
                "node": serializers.IntegerField(),
                "score": serializers.FloatField(),
                "suspended": serializers.BooleanField(),
                "review": serializers.CharField(),
                "signals": serializers.DictField(),
                "history": serializers.ListField(child=serializers.ListField()),
                "evidence": EvidenceOut(many=True),
            },
        )
    )
    def get(self, request, pk: int):
        nodes = Node.objects.all() if request.user.is_staff else Node.objects.filter(owner=request.user)
        node = get_object_or_404(nodes, pk=pk)
        standing = NodeStanding.objects.filter(node=node).first()
        history = scoring.score_history(node)[-500:]
        return Response(
            {
                "node": node.pk,
                "score": scoring.node_score(node),
                "suspended": bool(standing and standing.suspended),
                "review": standing.review if standing else "",
                "signals": standing.signals if standing else {},
                "history": [[at.isoformat(), score] for at, score in history],
                "evidence": EvidenceOut(AuditEvidence.objects.filter(node=node)[:100], many=True).data,
            }
        )
