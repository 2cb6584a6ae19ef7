"""The ledger's tables: accounts, append-only transactions and their entries, anonymous quota use.

Amounts are integer **credits**; one credit is one block-token of work (one token's hidden state
through one transformer block). A balance is never stored: it is the sum of the account's entries.
Entries and transactions are append-only: the ORM refuses updates and deletes, and on PostgreSQL a
trigger refuses them too (migration ``0002``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class AppendOnlyError(Exception):
    """Raised when code tries to change or delete a posted ledger row."""


class AppendOnlyQuerySet(models.QuerySet):
    """A query set that cannot update or delete rows in bulk."""

    def update(self, **kwargs):
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only")

    def delete(self):
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only")


class AppendOnlyModel(models.Model):
    """A row written once: ``save()`` inserts, never updates; ``delete()`` refuses."""

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError(f"{type(self).__name__} rows are append-only")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError(f"{type(self).__name__} rows are append-only")


class Account(models.Model):
    """Where credits are: a user's spendable balance, a node's escrow, or a system account.

    User and escrow accounts may never go below zero; system accounts may (``system:rewards`` is where
    node rewards are issued from, so it runs negative by what the swarm has paid out).
    """

    class Kind(models.TextChoices):
        USER = "user"  # a user's spendable balance
        ESCROW = "escrow"  # a new node's earnings, held until the node's reputation is built
        HELD = "held"  # a user's earnings that are not payable: unfunded by real value, or flagged for review
        SYSTEM = "system"  # grants, deposits, revenue, rewards, payouts in review, paid out

    kind = models.CharField(max_length=8, choices=Kind.choices)
    code = models.CharField(max_length=80, unique=True)  # "user:17", "escrow:node:5", "system:revenue"
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_accounts"
    )
    node = models.ForeignKey(
        "swarm.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="escrow_accounts"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user"], condition=models.Q(kind="user"), name="ledger_one_account_per_user"
            ),
        ]

    def __str__(self) -> str:
        return self.code

    @property
    def may_go_negative(self) -> bool:
        """Only system accounts may hold a negative balance."""
        return self.kind == self.Kind.SYSTEM


class Transaction(AppendOnlyModel):
    """One balanced movement of credits: its entries sum to zero. ``reference`` makes posting idempotent."""

    class Kind(models.TextChoices):
        GRANT = "grant"  # a new user's starting credits (spendable, never payable, funds nothing payable)
        DEPOSIT = "deposit"  # credits bought with real value (spendable, not payable themselves, fund earnings)
        USAGE = "usage"  # chat / API tokens a user consumed
        RECEIPT = "receipt"  # a doubly-signed usage receipt settled: payer -> node owner (or escrow)
        ESCROW_RELEASE = "escrow_release"  # a node built reputation: escrow -> owner
        HELD_RELEASE = "held_release"  # an admin cleared a flagged receipt: held -> owner (funded part only)
        PAYOUT_REQUEST = "payout_request"  # owner -> payouts in review
        PAYOUT_RETURN = "payout_return"  # rejected: payouts in review -> owner
        PAYOUT_PAID = "payout_paid"  # approved: payouts in review -> paid out

    kind = models.CharField(max_length=16, choices=Kind.choices)
    reference = models.CharField(max_length=200, unique=True)  # e.g. "usage:chat:42:7", "receipt:<uuid>"
    memo = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Collected revenue this transaction adds (> 0: usage a user paid beyond the grant) or uses (< 0: gateway
    # work made payable); its sum is what may still fund payable earnings (portal.ledger.funding).
    funded = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["kind", "funded"], name="ledger_txn_funded", condition=~models.Q(funded=0))]

    def __str__(self) -> str:
        return f"{self.kind} {self.reference}"


class Entry(AppendOnlyModel):
    """One leg of a transaction: ``amount`` credits into (positive) or out of (negative) ``account``."""

    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    amount = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)  # the transaction's time (for time series)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["account", "created_at"])]
        constraints = [models.CheckConstraint(condition=~models.Q(amount=0), name="ledger_entry_nonzero")]

    def __str__(self) -> str:
        return f"{self.amount:+d} {self.account_id}"


class AnonymousUsage(AppendOnlyModel):
    """Tokens an anonymous visitor (keyed by a digest of its session or address) used: the quota's record."""

    key_digest = models.CharField(max_length=64)
    tokens = models.PositiveIntegerField()
    reference = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["key_digest", "created_at"])]

    def __str__(self) -> str:
        return f"{self.tokens} tokens by {self.key_digest[:8]}…"


class ClientKey(models.Model):
    """An Ed25519 client key whose signed usage receipts are paid from an account (spec §8.4).

    ``user`` set: the user's account pays (a program using the swarm with ``identity=``). ``user`` empty:
    the portal gateway's own key; its receipts are paid from ``system:rewards``, because the chat and
    API users it served were already charged by ``charge_usage``.
    """

    key = models.CharField(max_length=60, unique=True)  # "ed25519:<base64url>"
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="client_keys"
    )
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key[:20]}…)"

    @property
    def is_gateway(self) -> bool:
        """The portal gateway's key (paid from the system)."""
        return self.user_id is None


class Receipt(models.Model):
    """A usage receipt signed by a client and countersigned by a node, as submitted (spec §8).

    The signed fields are kept verbatim (``receipt`` and both signatures) as evidence. ``status`` moves
    ``pending -> settled`` or ``pending -> refused`` once, under a row lock; the credits themselves are
    the ledger transaction ``receipt:<receipt_id>`` (unique), so a receipt is paid at most once.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        SETTLED = "settled"
        REFUSED = "refused"  # e.g. the paying user's balance was short

    receipt_id = models.CharField(max_length=32, unique=True)
    session_id = models.CharField(max_length=128)
    model = models.CharField(max_length=128)
    start_block = models.PositiveIntegerField()
    end_block = models.PositiveIntegerField()
    tokens = models.BigIntegerField()
    block_tokens = models.BigIntegerField()
    client_key = models.ForeignKey(ClientKey, on_delete=models.PROTECT, related_name="receipts")
    node = models.ForeignKey("swarm.Node", null=True, on_delete=models.SET_NULL, related_name="receipts")
    earner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="earned_receipts")
    issued_at = models.DateTimeField()
    receipt = models.CharField(max_length=4096)  # canonical bytes, base64url
    client_signature = models.CharField(max_length=128)
    node_signature = models.CharField(max_length=128)
    submitted_at = models.DateTimeField(default=timezone.now)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    settled_at = models.DateTimeField(null=True, blank=True)
    escrowed = models.BooleanField(default=False)  # credited to the node's escrow, not straight to its owner
    transaction = models.OneToOneField(
        Transaction, null=True, blank=True, on_delete=models.PROTECT, related_name="receipt"
    )
    refusal = models.CharField(max_length=300, blank=True)
    # Funding (portal.ledger.funding): the part of block_tokens no real value paid for (the payer's grant, or
    # gateway work beyond collected revenue). It is credited to the earner's held account, never payable.
    unfunded_credits = models.BigIntegerField(default=0)
    # Linked traffic (portal.ledger.linking): why this receipt looks like an account paying itself; while set
    # and not cleared, the whole receipt sits in the earner's held account until an admin reviews it.
    flag = models.CharField(max_length=200, blank=True)
    held_credits = models.BigIntegerField(default=0)  # credited to the held account at settlement
    cleared_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cleared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-submitted_at", "-id"]
        indexes = [models.Index(fields=["status", "id"]), models.Index(fields=["earner", "settled_at"])]

    def __str__(self) -> str:
        return f"receipt {self.receipt_id[:8]}… {self.block_tokens} block-tokens ({self.status})"


class Payout(models.Model):
    """A node owner's request to be paid credits out of the swarm, reviewed by an admin.

    Requesting moves the credits from the owner's account to ``system:payouts-in-review``; approving
    moves them on to ``system:paid-out`` (with the external payment's reference); rejecting returns them
    to the owner (with a reason); holding keeps them in review. Every step is a :class:`PayoutEvent`.
    """

    class Status(models.TextChoices):
        REQUESTED = "requested"
        HELD = "held"
        APPROVED = "approved"
        REJECTED = "rejected"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payouts")
    amount = models.BigIntegerField()
    destination = models.CharField(max_length=200)  # where the owner wants to be paid (account, wallet)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.REQUESTED)
    requested_at = models.DateTimeField(default=timezone.now)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    external_reference = models.CharField(max_length=200, blank=True)  # the payment's id outside the swarm
    reason = models.CharField(max_length=500, blank=True)  # why rejected or held

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["status", "requested_at"])]
        constraints = [models.CheckConstraint(condition=models.Q(amount__gt=0), name="ledger_payout_positive")]

    def __str__(self) -> str:
        return f"payout #{self.pk} of {self.amount} credits to {self.user} ({self.status})"

    @property
    def open(self) -> bool:
        """Still waiting for a final decision."""
        return self.status in (self.Status.REQUESTED, self.Status.HELD)


class PayoutEvent(AppendOnlyModel):
    """One audited step of a payout: requested, held, approved, rejected (who, when, why)."""

    payout = models.ForeignKey(Payout, on_delete=models.PROTECT, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=10)
    detail = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.action} of payout #{self.payout_id} at {self.at:%Y-%m-%d %H:%M}"
