"""Ledger API: submit receipts; your balance, transactions, receipts, client keys and payouts.

Everything here is about the caller's own account: nobody can read another user's balance,
receipts or payouts (other users' objects answer 404, as if they did not exist).
"""

from __future__ import annotations

from django.db.models import Q
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_view, inline_serializer
from rest_framework import generics, serializers, status
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


class _OwnObjects(generics.ListCreateAPIView):
    """``GET``: the caller's objects of the serializer's model; ``POST``: create one for the caller.

    The serializer's ``create`` calls a domain function; its refusals (``refusals``, with ``code`` and
    ``detail``) answer 400 ``{"error", "detail"}``.
    """

    refusals: tuple[type[Exception], ...] = ()

    def get_queryset(self):
        """The caller's objects (nobody else's are listed)."""
        return self.get_serializer_class().Meta.model.objects.filter(user=self.request.user)

    def create(self, request, *args, **kwargs):
        """DRF's create (201 with the new object), or the domain's refusal as a 400."""
        try:
            return super().create(request, *args, **kwargs)
        except self.refusals as exc:
            return _refused(exc)

    def perform_create(self, serializer) -> None:
        """The new object belongs to the caller."""
        serializer.save(user=self.request.user)


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


class Receipts(generics.ListAPIView):
    """``POST``: submit a doubly-signed receipt (a node with its node token, or a client); ``GET``: your receipts."""

    authentication_classes = [NodeTokenAuthentication, ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]
    serializer_class = ReceiptSerializer

    def get_queryset(self):
        """The latest 200 receipts the caller earned (as a node owner) or paid (with a client key)."""
        user = self.request.user
        return Receipt.objects.filter(Q(earner=user) | Q(client_key__user=user)).order_by("-id")[:200]

    @extend_schema(
        request=SignedReceiptSerializer,
        responses={200: ReceiptSerializer, 201: ReceiptSerializer, 400: _ERROR},
    )
    def post(self, request):
        """Submit a receipt: 201 when new, 200 when it was already stored, 400 when refused."""
        ser = SignedReceiptSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            receipt, created = receipts.submit_receipt(ser.validated_data, submitted_by=request.user)
        except receipts.ReceiptRefused as exc:
            return _refused(exc)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(ReceiptSerializer(receipt).data, status=code)


class Balance(APIView):
    """Your credits: balance, payable (earned, not yet paid out), earned, in escrow, held, spent; tokens affordable."""

    @extend_schema(
        responses={
            200: inline_serializer(
                "Balance",
                {
                    "balance": serializers.IntegerField(),
                    "payable": serializers.IntegerField(),
                    "earned": serializers.IntegerField(),
                    "escrow": serializers.IntegerField(),
                    "held": serializers.IntegerField(help_text="earnings that are not payable: unfunded or flagged"),
                    "spent_on_usage": serializers.IntegerField(),
                    "tokens_affordable": serializers.IntegerField(),
                },
            )
        }
    )
    def get(self, request):
        """The caller's statement summary."""
        body = statements.summary(request.user)
        body["tokens_affordable"] = tokens_affordable(request.user)
        return Response(body)


class EntrySerializer(serializers.ModelSerializer):
    """One entry of your account, with its transaction's kind, memo and reference."""

    at = serializers.DateTimeField(source="created_at")
    kind = serializers.CharField(source="transaction.kind")
    memo = serializers.CharField(source="transaction.memo")
    reference = serializers.CharField(source="transaction.reference")

    class Meta:
        model = Entry
        fields = ["at", "kind", "memo", "reference", "amount"]
        read_only_fields = fields


class Transactions(generics.ListAPIView):
    """The latest 100 entries of your account."""

    serializer_class = EntrySerializer

    def get_queryset(self):
        """The caller's account entries, newest first."""
        account = user_account(self.request.user)
        return Entry.objects.filter(account=account).select_related("transaction").order_by("-id")[:100]


class ClientKeySerializer(serializers.ModelSerializer):
    """A registered client key."""

    class Meta:
        model = ClientKey
        fields = ["id", "name", "key", "created_at", "revoked_at"]
        read_only_fields = ["id", "created_at", "revoked_at"]

    def create(self, validated_data) -> ClientKey:
        """Register the key for ``user`` (raises ``ReceiptRefused``)."""
        return receipts.register_client_key(validated_data["user"], validated_data["key"], validated_data["name"])


@extend_schema_view(post=extend_schema(responses={201: ClientKeySerializer, 400: _ERROR}))
class ClientKeys(_OwnObjects):
    """``GET``: your client keys; ``POST {name, key}``: register one (its receipts are paid from your account)."""

    serializer_class = ClientKeySerializer
    refusals = (receipts.ReceiptRefused,)


class RevokeClientKey(APIView):
    """Revoke one of your client keys (others' are 404)."""

    @extend_schema(request=None, responses={200: ClientKeySerializer})
    def post(self, request, pk: int):
        """Revoke the key; it stays listed, with ``revoked_at``."""
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

    def create(self, validated_data) -> Payout:
        """Request the payout for ``user`` (raises ``PayoutRefused``)."""
        return payouts.request_payout(validated_data["user"], validated_data["amount"], validated_data["destination"])


@extend_schema_view(post=extend_schema(responses={201: PayoutSerializer, 400: _ERROR}))
class Payouts(_OwnObjects):
    """``GET``: your payouts; ``POST {amount, destination}``: request one (earned credits only)."""

    serializer_class = PayoutSerializer
    refusals = (payouts.PayoutRefused,)
