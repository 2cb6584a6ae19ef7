"""Ledger API: submit receipts; your balance, transactions, receipts, client keys and payouts.

Everything here is about the caller's own account: nobody can read another user's balance,
receipts or payouts (other users' objects answer 404, as if they did not exist).
"""

from __future__ import annotations

from django.db.models import Q
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.accounts.authentication import ApiKeyAuthentication, NodeTokenAuthentication
from portal.ledger import payouts, receipts, statements
from portal.ledger.books import user_account
from portal.ledger.models import ClientKey, Entry, Payout, Receipt
from portal.ledger.spending import tokens_affordable

_ERROR = inline_serializer("LedgerError", {"error": serializers.CharField(), "detail": serializers.CharField()})


def _refused(exc) -> Response:
    return Response({"error": exc.code, "detail": exc.detail}, status=status.HTTP_400_BAD_REQUEST)


class SignedReceiptSerializer(serializers.Serializer):
    """A doubly-signed usage receipt (spec §8.4): three base64url texts."""

    receipt = serializers.CharField(max_length=4096)
    client_signature = serializers.CharField(max_length=128)
    node_signature = serializers.CharField(max_length=128)


class ReceiptSerializer(serializers.ModelSerializer):
    """A stored receipt as its earner or payer sees it."""

    node = serializers.IntegerField(source="node_id", allow_null=True)

    class Meta:
        model = Receipt
        fields = [
            "receipt_id",
            "status",
            "model",
            "start_block",
            "end_block",
            "tokens",
            "block_tokens",
            "node",
            "issued_at",
            "submitted_at",
            "settled_at",
            "escrowed",
            "refusal",
        ]
        read_only_fields = fields


class Receipts(APIView):
    """``POST``: submit a doubly-signed receipt (a node with its node token, or a client); ``GET``: your receipts."""

    authentication_classes = [NodeTokenAuthentication, ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=SignedReceiptSerializer,
        responses={200: ReceiptSerializer, 201: ReceiptSerializer, 400: _ERROR},
    )
    def post(self, request):
        ser = SignedReceiptSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            receipt, created = receipts.submit_receipt(ser.validated_data, submitted_by=request.user)
        except receipts.ReceiptRefused as exc:
            return _refused(exc)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(ReceiptSerializer(receipt).data, status=code)

    @extend_schema(responses={200: ReceiptSerializer(many=True)})
    def get(self, request):
        mine = Receipt.objects.filter(Q(earner=request.user) | Q(client_key__user=request.user)).order_by("-id")[:200]
        return Response(ReceiptSerializer(mine, many=True).data)


class Balance(APIView):
    """Your credits: balance, payable (earned, not yet paid out), earned, in escrow, spent; tokens affordable."""

    @extend_schema(
        responses={
            200: inline_serializer(
                "Balance",
                {
                    "balance": serializers.IntegerField(),
                    "payable": serializers.IntegerField(),
                    "earned": serializers.IntegerField(),
                    "escrow": serializers.IntegerField(),
                    "spent_on_usage": serializers.IntegerField(),
                    "tokens_affordable": serializers.IntegerField(),
                },
            )
        }
    )
    def get(self, request):
        body = statements.summary(request.user)
        body["tokens_affordable"] = tokens_affordable(request.user)
        return Response(body)


class Transactions(APIView):
    """The latest 100 entries of your account."""

    @extend_schema(
        responses={
            200: inline_serializer(
                "Entry",
                {
                    "at": serializers.DateTimeField(),
                    "kind": serializers.CharField(),
                    "memo": serializers.CharField(),
                    "reference": serializers.CharField(),
                    "amount": serializers.IntegerField(),
                },
                many=True,
            )
        }
    )
    def get(self, request):
        entries = (
            Entry.objects.filter(account=user_account(request.user)).select_related("transaction").order_by("-id")[:100]
        )
        return Response(
            [
                {
                    "at": e.created_at,
                    "kind": e.transaction.kind,
                    "memo": e.transaction.memo,
                    "reference": e.transaction.reference,
                    "amount": e.amount,
                }
                for e in entries
            ]
        )


class ClientKeySerializer(serializers.ModelSerializer):
    """A registered client key."""

    class Meta:
        model = ClientKey
        fields = ["id", "name", "key", "created_at", "revoked_at"]
        read_only_fields = ["id", "created_at", "revoked_at"]


class ClientKeys(APIView):
    """``GET``: your client keys; ``POST {name, key}``: register one (its receipts are paid from your account)."""

    @extend_schema(responses={200: ClientKeySerializer(many=True)})
    def get(self, request):
        return Response(ClientKeySerializer(ClientKey.objects.filter(user=request.user), many=True).data)

    @extend_schema(request=ClientKeySerializer, responses={201: ClientKeySerializer, 400: _ERROR})
    def post(self, request):
        ser = ClientKeySerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            key = receipts.register_client_key(request.user, ser.validated_data["key"], ser.validated_data["name"])
        except receipts.ReceiptRefused as exc:
            return _refused(exc)
        return Response(ClientKeySerializer(key).data, status=status.HTTP_201_CREATED)


class RevokeClientKey(APIView):
    """Revoke one of your client keys (others' are 404)."""

    @extend_schema(request=None, responses={200: ClientKeySerializer})
    def post(self, request, pk: int):
        key = get_object_or_404(ClientKey, pk=pk, user=request.user)
        receipts.revoke_client_key(key)
        return Response(ClientKeySerializer(key).data)


class PayoutSerializer(serializers.ModelSerializer):
    """A payout request and its review."""

    class Meta:
        model = Payout
        fields = [
            "id",
            "amount",
            "destination",
            "status",
            "requested_at",
            "reviewed_at",
            "external_reference",
            "reason",
        ]
        read_only_fields = ["id", "status", "requested_at", "reviewed_at", "external_reference", "reason"]


class Payouts(APIView):
    """``GET``: your payouts; ``POST {amount, destination}``: request one (earned credits only)."""

    @extend_schema(responses={200: PayoutSerializer(many=True)})
    def get(self, request):
        return Response(PayoutSerializer(Payout.objects.filter(user=request.user), many=True).data)

    @extend_schema(request=PayoutSerializer, responses={201: PayoutSerializer, 400: _ERROR})
    def post(self, request):
        ser = PayoutSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            payout = payouts.request_payout(
                request.user, ser.validated_data["amount"], ser.validated_data["destination"]
            )
        except payouts.PayoutRefused as exc:
            return _refused(exc)
        return Response(PayoutSerializer(payout).data, status=status.HTTP_201_CREATED)
