"""API views: parse, authorize, call the tracker, serialize."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.accounts.authentication import NodeTokenAuthentication
from portal.api.dht_spans import dht_only_spans
from portal.api.permissions import IsNodeToken
from portal.api.serializers import (
    HeartbeatSerializer,
    NodeSerializer,
    RegistrationSerializer,
    SpanSerializer,
    SwarmModelSerializer,
)
from portal.reputation import scoring
from portal.swarm import tracker
from portal.swarm.browser_node import (
    BROWSER_BACKEND,
    SpanProofError,
    check_span_proof,
    issue_span_challenge,
    span_file_path,
)
from portal.swarm.health import swarm_health
from portal.swarm.models import Node, SwarmModel
from portal.swarm.node_keys import KeyProofError, check_key_proof, issue_key_challenge

_ERROR = inline_serializer("TrackerError", {"error": serializers.CharField(), "detail": serializers.CharField()})
_STATE = inline_serializer(
    "NodeState",
    {
        "id": serializers.IntegerField(),
        "state": serializers.CharField(),
        "heartbeat_interval": serializers.FloatField(),
    },
)


def _error(exc: tracker.TrackerError) -> Response:
    return Response({"error": exc.code, "detail": exc.message}, status=exc.status)


def _state(node: Node, code: int = status.HTTP_200_OK) -> Response:
    body = {"id": node.pk, "state": node.state, "heartbeat_interval": settings.SWARM_HEARTBEAT_INTERVAL}
    return Response(body, status=code)


class _NodeTokenView(APIView):
    authentication_classes = [NodeTokenAuthentication]
    permission_classes = [IsNodeToken]


class RegisterNode(_NodeTokenView):
    """A node announces its span (node token). A node is its identity key: re-registering the key (a restart,
    a new address, span or token of the same account) refreshes the same node (``portal.swarm.tracker``).

    A node announcing a ``public_key`` proves it holds the key (``key_proof``, see :class:`KeyChallenge`);
    a key proven by another account is refused (409 ``key_taken``).
    """

    @extend_schema(
        request=RegistrationSerializer, responses={200: _STATE, 201: _STATE, 400: _ERROR, 403: _ERROR, 409: _ERROR}
    )
    def post(self, request):
        ser = RegistrationSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        reg = ser.to_registration()
        if reg.public_key:  # the key names who gets paid for its receipts: only its holder may announce it
            try:
                check_key_proof(request.auth.pk, reg.public_key, ser.validated_data.get("key_proof"))
            except KeyProofError as exc:
                return Response({"error": "key_not_proven", "detail": str(exc)}, status=status.HTTP_403_FORBIDDEN)
        if reg.backend == BROWSER_BACKEND:  # a browser node proves it holds the span it claims
            try:
                check_span_proof(
                    request.auth.pk, reg.model, reg.start_block, reg.end_block, ser.validated_data.get("span_proof")
                )
            except SpanProofError as exc:
                return Response({"error": "span_not_loaded", "detail": str(exc)}, status=status.HTTP_403_FORBIDDEN)
        try:
            node, created = tracker.register_node(request.auth, reg)
        except tracker.TrackerError as exc:
            return _error(exc)
        return _state(node, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class SpanChallenge(_NodeTokenView):
    """A nonce a browser node hashes with its span file's bytes to prove, when it registers, that it holds them."""

    @extend_schema(
        request=inline_serializer("SpanChallengeRequest", {"sha256": serializers.CharField()}),
        responses={200: inline_serializer("SpanChallenge", {"nonce": serializers.CharField()}), 404: _ERROR},
    )
    def post(self, request):
        sha256 = str(request.data.get("sha256", ""))
        if span_file_path(sha256) is None:
            return Response(
                {"error": "no_such_span_file", "detail": "no prepared span file with that SHA-256"}, status=404
            )
        return Response({"nonce": issue_span_challenge(request.auth.pk, sha256)})


class KeyChallenge(_NodeTokenView):
    """A nonce a node signs with its identity key to prove, when it registers, that it holds the key."""

    @extend_schema(request=None, responses={200: inline_serializer("KeyChallenge", {"nonce": serializers.CharField()})})
    def post(self, request):
        return Response({"nonce": issue_key_challenge(request.auth.pk)})


class NodeHeartbeat(_NodeTokenView):
    """A node says it is alive (node token; only the token that registered the node)."""

    @extend_schema(request=HeartbeatSerializer, responses={200: _STATE, 403: _ERROR, 404: _ERROR, 410: _ERROR})
    def post(self, request, pk: int):
        ser = HeartbeatSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            state = tracker.record_heartbeat(request.auth, pk, ser.to_beat())
        except tracker.TrackerError as exc:
            return _error(exc)
        return Response({"id": pk, "state": state, "heartbeat_interval": settings.SWARM_HEARTBEAT_INTERVAL})


class NodeLeave(_NodeTokenView):
    """A node shutting down goes offline at once (node token)."""

    @extend_schema(request=None, responses={200: _STATE, 404: _ERROR})
    def post(self, request, pk: int):
        try:
            node = tracker.leave(request.auth, pk)
        except tracker.TrackerError as exc:
            return _error(exc)
        return _state(node)


class MyNodes(APIView):
    """The signed-in user's nodes (session or API key)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=NodeSerializer(many=True))
    def get(self, request):
        nodes = Node.objects.filter(owner=request.user).select_related("model").order_by("-last_seen_at")[:500]
        return Response(NodeSerializer(nodes, many=True).data)


class MyNode(APIView):
    """One of the signed-in user's nodes; other users' nodes are 404."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=NodeSerializer)
    def get(self, request, pk: int):
        node = get_object_or_404(Node.objects.select_related("model"), pk=pk, owner=request.user)
        return Response(NodeSerializer(node).data)


class Models(APIView):
    """Models the swarm serves (public)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(responses=SwarmModelSerializer(many=True))
    def get(self, request):
        online = Q(nodes__state=Node.State.ONLINE, nodes__banned=False, nodes__owner__is_active=True)
        models = SwarmModel.objects.annotate(online_nodes=Count("nodes", filter=online))
        return Response(SwarmModelSerializer(models, many=True).data)


class ModelSpans(APIView):
    """Online nodes serving spans of one model: what clients route over (public, like a BitTorrent tracker).

    The tracker's nodes first, then those only the portal's DHT client finds (``source: "dht"``, ``id`` null).
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses=inline_serializer(
            "ModelSpans",
            {
                "model": serializers.CharField(),
                "num_blocks": serializers.IntegerField(),
                "spans": SpanSerializer(many=True),
            },
        )
    )
    def get(self, request, model: str):
        swarm_model = get_object_or_404(SwarmModel, name=model)
        spans = list(scoring.with_scores(scoring.trusted(tracker.online_spans(swarm_model.name))))
        from_dht = dht_only_spans(swarm_model, spans)  # #18: nodes announced only in the DHT
        return Response(
            {
                "model": swarm_model.name,
                "num_blocks": swarm_model.num_blocks,
                "spans": [*SpanSerializer(spans, many=True).data, *from_dht],
            }
        )


class SwarmHealth(APIView):
    """Coverage of every model's blocks by online nodes (public; the health map polls this)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(responses=inline_serializer("SwarmHealth", {"models": serializers.ListField()}))
    def get(self, request):
        return Response(swarm_health(request.query_params.get("model") or None))
