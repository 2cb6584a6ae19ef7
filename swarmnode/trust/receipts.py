"""Usage receipts: what a client consumed from a node in one session, signed by both (spec §8).

A receipt says "node N ran ``tokens`` positions of session S through its blocks [start, end) of
model M for client C". The client signs it when it closes the session (``close_session.receipt``);
the node checks it against its own count and countersigns (``session_closed.node_signature``). A
receipt signed by both is what the portal settles: it credits the node's owner ``block_tokens``
credits, paid by the account the client's key belongs to, once per ``receipt_id``.

Encoding is canonical so both sides sign the same bytes: a msgpack map with the fields in sorted key
order, integers and strings only, nothing else. :func:`UsageReceipt.decode` refuses anything that is
not exactly that (other keys, other types, a different byte layout), so a receipt has exactly one
encoding and a signature cannot be moved to a different-looking copy. Never pickle.

Used by ``server`` and ``client``; the portal imports it too (it has no Django import).
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from dataclasses import asdict, dataclass, fields

import msgpack

from swarmnode.protocol import ProtocolError
from swarmnode.protocol.framing import unpack
from swarmnode.trust.identity import NodeIdentity, parse_public_key, verify_signature

__all__ = [
    "RECEIPT_VERSION",
    "ReceiptError",
    "SignedReceipt",
    "UsageReceipt",
    "countersign",
    "key_of",
    "raw_key",
    "signing_key",
]

RECEIPT_VERSION = 1
MAX_RECEIPT_BYTES = 2048
_CLIENT_TAG = b"layerswarm/receipt/v1/client\x00"  # domain separation: a client's signature ...
_NODE_TAG = b"layerswarm/receipt/v1/node\x00"  # ... can never pass for a node's, nor the reverse
_KEY = re.compile(r"^ed25519:[A-Za-z0-9_-]{43}$")
_ID = re.compile(r"^[0-9a-f]{32}$")


class ReceiptError(ValueError):
    """A receipt or signature is malformed, inconsistent or does not verify."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str, what: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) > 4096:
        raise ReceiptError(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise ReceiptError(f"{what} is not base64url") from exc


def key_of(identity: NodeIdentity) -> str:
    """The ``ed25519:<base64url>`` form of an identity's signing key (what receipts name)."""
    return f"ed25519:{_b64(identity.public.ed25519)}"


def signing_key(announced: str) -> str:
    """The ``ed25519:<base64url>`` part of a node's announced ``ed25519:...,x25519:...`` key (spec §1.4).

    Raises:
        ReceiptError: the announced key is malformed.
    """
    try:
        return f"ed25519:{_b64(parse_public_key(announced).ed25519)}"
    except ValueError as exc:
        raise ReceiptError(f"malformed announced key: {exc}") from None


def raw_key(key: str) -> bytes:
    """The raw 32-byte Ed25519 key of an ``ed25519:<base64url>`` string.

    Raises:
        ReceiptError: not such a string.
    """
    if not isinstance(key, str) or not _KEY.match(key):
        raise ReceiptError(f"not an ed25519 key: {key[:60] if isinstance(key, str) else type(key).__name__!r}")
    raw = _unb64(key.split(":", 1)[1], "key")
    if len(raw) != 32:
        raise ReceiptError("an ed25519 key has 32 bytes")
    return raw


@dataclass(frozen=True)
class UsageReceipt:
    """What one node served one client in one session.

    Attributes:
        receipt_id: 32 lowercase hex characters chosen by the client; the portal pays each once.
        session_id: the session on the node.
        model: the model's registry name.
        start_block, end_block: the node's span, end exclusive.
        tokens: positions run through the span (``B * T`` summed over the session's steps, replays included).
        client_key: the client's Ed25519 key, ``ed25519:<base64url>``: whose account pays.
        node_key: the node's Ed25519 key: whose owner earns.
        issued_at: Unix seconds when the client closed the session.
        v: the receipt format version (1).
    """

    receipt_id: str
    session_id: str
    model: str
    start_block: int
    end_block: int
    tokens: int
    client_key: str
    node_key: str
    issued_at: int
    v: int = RECEIPT_VERSION

    @classmethod
    def new(
        cls,
        *,
        session_id: str,
        model: str,
        start_block: int,
        end_block: int,
        tokens: int,
        client_key: str,
        node_key: str,
    ) -> UsageReceipt:
        """A receipt with a fresh random id, issued now."""
        receipt = cls(
            receipt_id=uuid.uuid4().hex,
            session_id=session_id,
            model=model,
            start_block=start_block,
            end_block=end_block,
            tokens=tokens,
            client_key=client_key,
            node_key=node_key,
            issued_at=int(time.time()),
        )
        receipt.check()
        return receipt

    @property
    def block_tokens(self) -> int:
        """Work done: tokens times blocks; the credits the node's owner earns."""
        return self.tokens * (self.end_block - self.start_block)

    def check(self) -> None:
        """Raise :class:`ReceiptError` unless every field is well-formed."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (type(value) is not int or not 0 <= value < 2**62):
                raise ReceiptError(f"{f.name} must be a non-negative integer")
            if f.type == "str" and (type(value) is not str or not 0 < len(value) <= 128):
                raise ReceiptError(f"{f.name} must be a string of 1 to 128 characters")
        if self.v != RECEIPT_VERSION:
            raise ReceiptError(f"receipt version {self.v} not supported")
        if not _ID.match(self.receipt_id):
            raise ReceiptError("receipt_id must be 32 lowercase hex characters")
        if not self.start_block < self.end_block:
            raise ReceiptError("start_block must be below end_block")
        if self.tokens <= 0:
            raise ReceiptError("a receipt is for at least one token")
        raw_key(self.client_key)
        raw_key(self.node_key)
        if self.client_key == self.node_key:
            raise ReceiptError("a node cannot be its own client")

    def encode(self) -> bytes:
        """The canonical bytes both sides sign: msgpack map, keys sorted."""
        return msgpack.packb(dict(sorted(asdict(self).items())), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> UsageReceipt:
        """Parse canonical receipt bytes.

        Raises:
            ReceiptError: not a canonical, well-formed receipt.
        """
        if not isinstance(data, bytes | bytearray) or len(data) > MAX_RECEIPT_BYTES:
            raise ReceiptError(f"a receipt is at most {MAX_RECEIPT_BYTES} bytes of msgpack")
        try:
            body = unpack(bytes(data), max_bin_bytes=MAX_RECEIPT_BYTES)  # bounded while it unpacks (§6.2)
        except ProtocolError as exc:
            raise ReceiptError(f"not msgpack ({exc.message})") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(body, dict) or set(body) != names:
            raise ReceiptError(f"a receipt is a map with exactly the keys {sorted(names)}")
        receipt = cls(**body)
        receipt.check()
        if receipt.encode() != bytes(data):
            raise ReceiptError("receipt bytes are not in canonical form")
        return receipt

    def client_message(self) -> bytes:
        """What the client signs."""
        return _CLIENT_TAG + self.encode()

    def node_message(self) -> bytes:
        """What the node signs."""
        return _NODE_TAG + self.encode()

    def sign_as_client(self, identity: NodeIdentity) -> str:
        """The client's signature (base64url); ``identity`` must hold ``client_key``."""
        if key_of(identity) != self.client_key:
            raise ReceiptError("this identity is not the receipt's client")
        return _b64(identity.sign(self.client_message()))

    def sign_as_node(self, identity: NodeIdentity) -> str:
        """The node's countersignature (base64url); ``identity`` must hold ``node_key``."""
        if key_of(identity) != self.node_key:
            raise ReceiptError("this identity is not the receipt's node")
        return _b64(identity.sign(self.node_message()))

    def verify_client(self, signature: str) -> None:
        """Raise :class:`ReceiptError` unless ``signature`` is the client's signature of this receipt."""
        if not verify_signature(raw_key(self.client_key), _unb64(signature, "client_signature"), self.client_message()):
            raise ReceiptError("the client's signature does not verify")

    def verify_node(self, signature: str) -> None:
        """Raise :class:`ReceiptError` unless ``signature`` is the node's signature of this receipt."""
        if not verify_signature(raw_key(self.node_key), _unb64(signature, "node_signature"), self.node_message()):
            raise ReceiptError("the node's signature does not verify")

    def to_text(self) -> str:
        """The canonical bytes as base64url (how receipts travel in frames and JSON)."""
        return _b64(self.encode())

    @classmethod
    def from_text(cls, text: str) -> UsageReceipt:
        """Parse :meth:`to_text` output. Raises :class:`ReceiptError`."""
        return cls.decode(_unb64(text, "receipt"))


@dataclass(frozen=True)
class SignedReceipt:
    """A receipt with both signatures: what gets submitted to the portal."""

    receipt: UsageReceipt
    client_signature: str
    node_signature: str

    def verify(self) -> None:
        """Raise :class:`ReceiptError` unless both signatures verify."""
        self.receipt.check()
        self.receipt.verify_client(self.client_signature)
        self.receipt.verify_node(self.node_signature)

    def to_json(self) -> dict:
        """``{"receipt", "client_signature", "node_signature"}``, all base64url text (``POST /api/v1/receipts/``)."""
        return {
            "receipt": self.receipt.to_text(),
            "client_signature": self.client_signature,
            "node_signature": self.node_signature,
        }

    @classmethod
    def from_json(cls, body: object) -> SignedReceipt:
        """Parse and verify a :meth:`to_json` body. Raises :class:`ReceiptError`."""
        if not isinstance(body, dict):
            raise ReceiptError("a signed receipt is a JSON object")
        parts = [body.get(k) for k in ("receipt", "client_signature", "node_signature")]
        if not all(isinstance(p, str) and p for p in parts):
            raise ReceiptError("receipt, client_signature and node_signature are required strings")
        signed = cls(UsageReceipt.from_text(parts[0]), parts[1], parts[2])
        signed.verify()
        return signed


def countersign(
    identity: NodeIdentity,
    receipt_text: str,
    client_signature: str,
    *,
    session_id: str,
    model: str,
    start_block: int,
    end_block: int,
    served: int,
) -> SignedReceipt:
    """The node's side of spec §8.3: check the client's receipt against what it served, then sign.

    Args:
        identity: the node's identity.
        receipt_text, client_signature: from ``close_session``.
        session_id, model, start_block, end_block: the session and span the node actually served.
        served: positions the node ran through its span in this session.

    Returns:
        The receipt with both signatures.

    Raises:
        ReceiptError: malformed, not signed by its client, about another session, span, model or
            node, or claiming more tokens than were served.
    """
    receipt = UsageReceipt.from_text(receipt_text)
    receipt.verify_client(client_signature)
    if receipt.node_key != key_of(identity):
        raise ReceiptError("the receipt names another node")
    if receipt.session_id != session_id:
        raise ReceiptError("the receipt is for another session")
    if (receipt.model, receipt.start_block, receipt.end_block) != (model, start_block, end_block):
        raise ReceiptError(f"the receipt is for {receipt.model} [{receipt.start_block}:{receipt.end_block})")
    if receipt.tokens > served:
        raise ReceiptError(f"the receipt claims {receipt.tokens} tokens; this node served {served}")
    return SignedReceipt(receipt, client_signature, receipt.sign_as_node(identity))
