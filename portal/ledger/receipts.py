"""Submitting doubly-signed usage receipts (spec §8.4): verify, attribute, store once.

:func:`submit_receipt` is what ``POST /api/v1/receipts/`` calls (the node posts every receipt it
countersigns; a client may post its copy too). It checks both signatures, that the receipt is not
from the future nor older than ``LEDGER_RECEIPT_MAX_AGE``, finds the node by the key's proven owner
(``portal.swarm.node_keys``; never just the newest node announcing the key) and the paying account by
the client key, and stores the receipt ``pending``. Submitting the same
receipt again returns the stored one. Settlement (``portal.ledger.settlement``) pays it later.

The portal gateway (the chat and the OpenAI-compatible API) signs with :func:`gateway_identity`,
whose key is registered without a user: its receipts are paid from ``system:rewards``, since the
people it served were charged through ``charge_usage``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.ledger.models import ClientKey, Receipt
from portal.swarm.models import Node, NodeKey
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import ReceiptError, SignedReceipt, key_of, raw_key


class ReceiptRefused(ValueError):
    """The receipt cannot be accepted; ``code`` says why (``bad_receipt``, ``unknown_node``, ...)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def gateway_identity() -> NodeIdentity:
    """The portal gateway's client identity (file ``LEDGER_GATEWAY_IDENTITY``), registered as the system key."""
    path = Path(settings.LEDGER_GATEWAY_IDENTITY)
    try:
        identity = NodeIdentity.load_or_create(path)
    except FileExistsError:  # another gateway process created it a moment ago
        identity = NodeIdentity.load_or_create(path)
    register_gateway_key(key_of(identity))
    return identity


def register_gateway_key(key: str) -> ClientKey:
    """Register ``key`` as a gateway key (receipts paid by the system); idempotent."""
    raw_key(key)
    try:
        with transaction.atomic():
            return ClientKey.objects.get_or_create(key=key, defaults={"name": "portal gateway", "user": None})[0]
    except IntegrityError:
        return ClientKey.objects.get(key=key)


def register_client_key(user, key: str, name: str) -> ClientKey:
    """Register a user's client key: receipts it signs are paid from the user's account.

    Raises:
        ReceiptRefused: ``bad_key`` (malformed) or ``key_taken`` (registered already, by anyone).
    """
    try:
        raw_key(key)
    except ReceiptError as exc:
        raise ReceiptRefused("bad_key", f"{exc}; expected ed25519:<base64url of 32 bytes>") from None
    try:
        with transaction.atomic():
            return ClientKey.objects.create(user=user, key=key, name=name[:100] or "client key")
    except IntegrityError:
        raise ReceiptRefused("key_taken", "this key is registered already") from None


def revoke_client_key(client_key: ClientKey) -> None:
    """Stop paying new receipts signed by the key (receipts stored before stay payable)."""
    if client_key.revoked_at is None:
        client_key.revoked_at = timezone.now()
        client_key.save(update_fields=["revoked_at"])


def node_for_key(node_key: str, model: str, start_block: int, end_block: int) -> Node | None:
    """The node that served a receipt signed by ``node_key`` (``ed25519:...``) for this span.

    Only the key's proven owner (:class:`~portal.swarm.models.NodeKey`) can be paid: among the nodes
    announcing the key, only that owner's count (newest first). Another account's node announcing a copy
    of the key, however new, never receives the earnings. None when nobody owns the key. A key is one node
    that may have moved to another span or model since it served the receipt (``portal.swarm.tracker``):
    a node announcing the key for this very span comes first, else the key's node.
    """
    owner_id = NodeKey.objects.filter(signing_key=node_key).values_list("owner_id", flat=True).first()
    if owner_id is None:
        return None
    nodes = Node.objects.filter(owner_id=owner_id, public_key__startswith=node_key + ",").select_related("owner")
    served = nodes.filter(model__name=model, start_block=start_block, end_block=end_block)
    return served.order_by("-registered_at", "-id").first() or nodes.order_by("-last_seen_at", "-id").first()


def submit_receipt(
    body: dict | SignedReceipt, *, submitted_by=None, now: dt.datetime | None = None
) -> tuple[Receipt, bool]:
    """Verify and store a doubly-signed receipt.

    Args:
        body: ``{"receipt", "client_signature", "node_signature"}`` (base64url texts) or a :class:`SignedReceipt`.
        submitted_by: the user whose credentials posted it (a node owner or a client), for the record.
        now: the current time (tests).

    Returns:
        ``(receipt, created)``; ``created`` is False when the receipt id was submitted before.

    Raises:
        ReceiptRefused: ``bad_receipt`` (malformed, a signature does not verify), ``stale_receipt``
            (too old or from the future), ``unknown_node``, ``unknown_client_key``, ``own_node`` (the
            client key belongs to the node's owner), ``conflict`` (another receipt with the same id).
    """
    try:
        signed = body if isinstance(body, SignedReceipt) else SignedReceipt.from_json(body)
        signed.verify()
    except ReceiptError as exc:
        raise ReceiptRefused("bad_receipt", str(exc)) from None
    r = signed.receipt
    existing = Receipt.objects.filter(receipt_id=r.receipt_id).first()
    if existing is not None:
        return _same(existing, signed), False
    now = now or timezone.now()
    issued = dt.datetime.fromtimestamp(r.issued_at, tz=dt.UTC)
    if issued > now + dt.timedelta(minutes=5) or issued < now - dt.timedelta(seconds=settings.LEDGER_RECEIPT_MAX_AGE):
        raise ReceiptRefused("stale_receipt", "the receipt was issued in the future or too long ago")
    node = node_for_key(r.node_key, r.model, r.start_block, r.end_block)
    if node is None:
        raise ReceiptRefused("unknown_node", "no node with this key served this span of this model")
    client_key = ClientKey.objects.filter(key=r.client_key, revoked_at__isnull=True).first()
    if client_key is None:
        raise ReceiptRefused("unknown_client_key", "the client key is not registered to any account (or is revoked)")
    if client_key.user_id is not None and client_key.user_id == node.owner_id:
        raise ReceiptRefused("own_node", "a client key of the node's own owner: there is nothing to pay")
    try:
        with transaction.atomic():
            stored = Receipt.objects.create(
                receipt_id=r.receipt_id,
                session_id=r.session_id,
                model=r.model,
                start_block=r.start_block,
                end_block=r.end_block,
                tokens=r.tokens,
                block_tokens=r.block_tokens,
                client_key=client_key,
                node=node,
                earner=node.owner,
                issued_at=issued,
                receipt=r.to_text(),
                client_signature=signed.client_signature,
                node_signature=signed.node_signature,
                submitted_by=submitted_by if getattr(submitted_by, "pk", None) else None,
            )
    except IntegrityError:  # the node and the client posted it at the same moment
        return _same(Receipt.objects.get(receipt_id=r.receipt_id), signed), False
    return stored, True


def _same(existing: Receipt, signed: SignedReceipt) -> Receipt:
    if existing.receipt != signed.receipt.to_text():
        raise ReceiptRefused("conflict", "another receipt with this receipt_id was submitted before")
    return existing
