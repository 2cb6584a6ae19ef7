"""Request and response shapes of the API (parsing and validation only; logic is in the domain apps)."""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from rest_framework import serializers

from portal.swarm.models import Node, SwarmModel
from portal.swarm.tracker import Beat
from swarmnode.discovery import PeerInfo
from swarmnode.protocol.relay import relay_key_id
from swarmnode.trust.identity import parse_public_key
from swarmnode.trust.secure_channel import key_id

MAX_BLOCK = 100_000
MAX_INT32 = 2**31 - 1
DTYPES = ["float32", "float16", "bfloat16", "int8", "int4"]


class FiniteFloatField(serializers.FloatField):
    """A float that is not NaN or infinite (DRF accepts the strings "nan" and "inf")."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not math.isfinite(value):
            self.fail("invalid")
        return value


class SpanProofSerializer(serializers.Serializer):
    """A browser node's proof that it holds its span's file (``portal.swarm.browser_node.check_span_proof``)."""

    sha256 = serializers.RegexField(r"^[0-9a-f]{64}$")
    nonce = serializers.CharField(max_length=512)
    proof = serializers.RegexField(r"^[0-9a-f]{64}$")


class KeyProofSerializer(serializers.Serializer):
    """A node's proof that it holds its announced key (``portal.swarm.node_keys.check_key_proof``)."""

    nonce = serializers.CharField(max_length=512)
    signature = serializers.RegexField(r"^[A-Za-z0-9_-]{86}={0,2}$")  # base64url of 64 bytes


class RegistrationSerializer(serializers.Serializer):
    """What ``swarmnode serve --portal`` announces."""

    model = serializers.SlugField(max_length=64)
    start_block = serializers.IntegerField(min_value=0, max_value=MAX_BLOCK)
    end_block = serializers.IntegerField(min_value=1, max_value=MAX_BLOCK)
    url = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")
    relay = serializers.BooleanField(required=False, default=False)
    relay_capacity = serializers.IntegerField(min_value=0, max_value=100_000, required=False, default=0)
    backend = serializers.CharField(max_length=32)
    device = serializers.CharField(max_length=64)
    dtype = serializers.ChoiceField(choices=DTYPES)
    throughput = FiniteFloatField(min_value=0, max_value=1e9, required=False, default=0.0)
    cache_tokens_left = serializers.IntegerField(min_value=0, max_value=MAX_INT32, required=False, default=0)
    max_session_length = serializers.IntegerField(min_value=1, max_value=1 << 24, required=False, default=8192)
    version = serializers.CharField(max_length=32)
    public_key = serializers.CharField(max_length=512, required=False, allow_blank=True, default="")
    manifest = serializers.RegexField(r"^[0-9a-f]{64}$", required=False, allow_blank=True, default="")  # §4.10
    span_digest = serializers.RegexField(r"^[0-9a-f]{64}$", required=False, allow_blank=True, default="")
    span_proof = SpanProofSerializer(required=False)  # required of browser nodes (backend onnxruntime-web)
    key_proof = KeyProofSerializer(required=False)  # required with a public_key

    def validate_public_key(self, value: str) -> str:
        if not value:
            return value
        try:
            return str(parse_public_key(value))  # canonical: the form receipts and key proofs name
        except ValueError as exc:
            raise serializers.ValidationError(f"not an ed25519:...,x25519:... key ({exc})") from None

    def validate_url(self, value: str) -> str:
        if not value:
            return value
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise serializers.ValidationError("not a valid URL") from None
        if parts.scheme not in ("ws", "wss") or not parts.hostname or (port is None and not relay_key_id(value)):
            raise serializers.ValidationError("must be ws://HOST:PORT/... or wss://HOST:PORT/...")
        return value

    def validate(self, attrs: dict) -> dict:
        if attrs["start_block"] >= attrs["end_block"]:
            raise serializers.ValidationError({"end_block": "must be greater than start_block"})
        if attrs["relay"] and attrs["url"]:  # a relay address R/<key_id> (swarmnode spec §9.1) of its own key
            kid = relay_key_id(attrs["url"])
            try:
                own = key_id(attrs["public_key"])
            except ValueError:
                own = None
            if kid is None or kid != own:
                raise serializers.ValidationError(
                    {"url": "a relayed node's url must be a relay address ending in the key id of its public_key"}
                )
        if not attrs["relay"] and not attrs["url"]:
            raise serializers.ValidationError({"url": "required unless relay is true"})
        return attrs

    def to_registration(self) -> PeerInfo:
        """The validated payload as the node's announced :class:`~swarmnode.discovery.PeerInfo`."""
        return PeerInfo(**{k: v for k, v in self.validated_data.items() if k not in ("span_proof", "key_proof")})


class HeartbeatSerializer(serializers.Serializer):
    """A node's periodic liveness report."""

    cache_tokens_left = serializers.IntegerField(min_value=0, max_value=MAX_INT32, required=False, default=0)
    throughput = FiniteFloatField(min_value=0, max_value=1e9, required=False, default=None, allow_null=True)
    open_sessions = serializers.IntegerField(min_value=0, max_value=MAX_INT32, required=False, default=0)

    def to_beat(self) -> Beat:
        """The validated payload as the tracker's :class:`Beat`."""
        return Beat(**self.validated_data)


class NodeSerializer(serializers.ModelSerializer):
    """A node as its owner sees it."""

    model = serializers.SlugRelatedField(slug_field="name", read_only=True)
    connection = serializers.CharField(read_only=True)

    class Meta:
        model = Node
        fields = [
            "id",
            "model",
            "start_block",
            "end_block",
            "state",
            "connection",
            "url",
            "relay",
            "backend",
            "device",
            "dtype",
            "throughput",
            "cache_tokens_left",
            "max_session_length",
            "open_sessions",
            "version",
            "banned",
            "registered_at",
            "last_seen_at",
        ]
        read_only_fields = fields


class SpanSerializer(serializers.ModelSerializer):
    """A node as clients see it: enough to route (``swarmnode.discovery.PeerInfo`` fields and more)."""

    model = serializers.CharField(source="model.name")
    num_blocks = serializers.IntegerField(source="model.num_blocks")
    hidden_size = serializers.IntegerField(source="model.hidden_size")
    reputation = serializers.FloatField(read_only=True)  # annotated by portal.reputation.scoring.with_scores

    class Meta:
        model = Node
        fields = [
            "id",
            "url",
            "relay",
            "model",
            "start_block",
            "end_block",
            "num_blocks",
            "hidden_size",
            "dtype",
            "cache_tokens_left",
            "max_session_length",
            "throughput",
            "backend",
            "device",
            "version",
            "public_key",
            "manifest",
            "span_digest",
            "reputation",
        ]
        read_only_fields = fields


class SwarmModelSerializer(serializers.ModelSerializer):
    """A catalogued model, with how many nodes are online for it (where its weights lie on the portal is not shown)."""

    online_nodes = serializers.IntegerField(read_only=True)
    chat = serializers.BooleanField(source="chat_capable", read_only=True)

    class Meta:
        model = SwarmModel
        fields = ["name", "kind", "chat", "architecture", "num_blocks", "hidden_size", "size_bytes", "source_kind",
                  "description", "online_nodes"]  # fmt: skip
        read_only_fields = fields
