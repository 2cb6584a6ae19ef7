"""A node's long-lived key pair: Ed25519 to sign what it serves, X25519 to agree session keys.

The node announces both public keys in one string (``NodeIdentity.public_key``)::

    ed25519:<base64url>,x25519:<base64url>

Clients and the portal parse it with :func:`parse_public_key`. Signatures let a client or an
auditor attribute a step result to the node that produced it (audits, usage receipts); the
X25519 key lets a client agree an end-to-end session key with the node, so that a relay between
them forwards ciphertext it can neither read nor alter undetected.

Used by both ``server`` and ``client``; imports nothing from either.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = [
    "KEY_PROOF_CONTEXT",
    "NodeIdentity",
    "PublicKeys",
    "key_proof_message",
    "parse_public_key",
    "verify_key_proof",
    "verify_signature",
]

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PublicKeys:
    """A node's announced public keys (raw 32-byte values)."""

    ed25519: bytes  # verifies the node's signatures
    x25519: bytes  # agrees session keys with the node

    def __str__(self) -> str:
        return f"ed25519:{_b64(self.ed25519)},x25519:{_b64(self.x25519)}"


def parse_public_key(text: str) -> PublicKeys:
    """Parse an announced ``ed25519:...,x25519:...`` string.

    Raises:
        ValueError: the string is not two well-formed 32-byte keys.
    """
    parts: dict[str, bytes] = {}
    for item in (text or "").split(","):
        kind, _, value = item.strip().partition(":")
        try:
            raw = _unb64(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"public key {kind!r} is not base64url") from exc
        if kind not in ("ed25519", "x25519") or len(raw) != 32:
            raise ValueError(f"malformed public key entry {item!r}")
        parts[kind] = raw
    if set(parts) != {"ed25519", "x25519"}:
        raise ValueError("public key must hold ed25519 and x25519 keys")
    return PublicKeys(ed25519=parts["ed25519"], x25519=parts["x25519"])


def verify_signature(public: PublicKeys | bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is the node's Ed25519 signature of ``message``."""
    raw = public.ed25519 if isinstance(public, PublicKeys) else public
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# Domain separation: a key proof can never be mistaken for (or replayed as) any other signed message.
KEY_PROOF_CONTEXT = b"layerswarm.node-key-proof.v1\x00"


def key_proof_message(nonce: str, public_key: str) -> bytes:
    """What a node signs to prove to a tracker that it holds ``public_key``'s private half.

    ``nonce`` is the tracker's challenge (it names the node token it was issued to, so a proof made
    for one account's registration is worthless for another's).
    """
    return KEY_PROOF_CONTEXT + nonce.encode() + b"\x00" + public_key.encode()


def verify_key_proof(public_key: str, nonce: str, signature: str) -> bool:
    """True if ``signature`` (base64url) is ``public_key``'s signature of :func:`key_proof_message`."""
    try:
        keys = parse_public_key(public_key)
        raw = _unb64(signature)
    except (ValueError, TypeError):
        return False
    return len(raw) == 64 and verify_signature(keys, raw, key_proof_message(nonce, public_key))


class NodeIdentity:
    """A node's private keys. Create with :meth:`generate` or :meth:`load_or_create`."""

    def __init__(self, signing: Ed25519PrivateKey, agreement: X25519PrivateKey) -> None:
        self._signing = signing
        self._agreement = agreement
        self.public = PublicKeys(
            ed25519=signing.public_key().public_bytes(_RAW, _RAW_PUB),
            x25519=agreement.public_key().public_bytes(_RAW, _RAW_PUB),
        )

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh identity (kept in memory only)."""
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> NodeIdentity:
        """Read the identity stored at ``path`` or create one there (mode 0600).

        The file holds the two raw 32-byte private keys, Ed25519 first. A leading ``~`` is the user's home
        (a config file's ``identity = "~/..."`` is not expanded by any shell).

        Raises:
            ValueError: the file exists but is not 64 bytes.
        """
        path = Path(path).expanduser()
        if path.exists():
            raw = path.read_bytes()
            if len(raw) != 64:
                raise ValueError(f"{path} is not a node identity file (expected 64 bytes)")
            return cls(
                Ed25519PrivateKey.from_private_bytes(raw[:32]),
                X25519PrivateKey.from_private_bytes(raw[32:]),
            )
        identity = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity._signing.private_bytes(_RAW, _RAW_PRIV, _NO_ENC))
            f.write(identity._agreement.private_bytes(_RAW, _RAW_PRIV, _NO_ENC))
        return identity

    @property
    def public_key(self) -> str:
        """The announced form ``ed25519:...,x25519:...``."""
        return str(self.public)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (64 bytes) of ``message``."""
        return self._signing.sign(message)

    def prove_key(self, nonce: str) -> str:
        """The base64url signature proving this identity holds :attr:`public_key` (see :func:`key_proof_message`)."""
        return _b64(self.sign(key_proof_message(nonce, self.public_key)))

    def shared_secret(self, peer_x25519: bytes) -> bytes:
        """X25519 shared secret with a peer's public key (feed it to a KDF, never use it raw).

        Raises:
            ValueError: the peer key is malformed or of low order.
        """
        return self._agreement.exchange(X25519PublicKey.from_public_bytes(peer_x25519))
