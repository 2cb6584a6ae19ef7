"""Model manifests: the ordered list of a model's objects, signed by its publisher.

A manifest names every object of a model by hash: one per transformer block (its tensors as one
safetensors file), the client's part (embeddings, final norm, head), and the tokenizer (its files as one
canonical JSON object). Each object also lists the SHA-256 of its fixed-size pieces, so that a piece
fetched from a peer is checked before the whole object has arrived. The manifest's canonical JSON
(sorted keys, no spaces, UTF-8) hashes to the model's identity (:attr:`Manifest.digest`).

A :class:`SignedManifest` carries the publisher's Ed25519 public key and signature over that canonical
JSON; :class:`TrustedPublishers` accepts it only when the key is on the trusted list (the portal publishes
the swarm's; a node may add its own) and the manifest names that key as its publisher.
Nothing here is pickled: manifests travel as JSON, read with hard limits.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "FORMAT",
    "MAX_MANIFEST_BYTES",
    "PIECE_SIZE",
    "ManifestError",
    "Manifest",
    "ObjectRef",
    "SignedManifest",
    "TrustedPublishers",
    "UntrustedManifest",
    "canonical_json",
    "key_id",
    "parse_publisher_key",
    "piece_hashes",
    "publisher_key_text",
    "span_digest",
]

FORMAT = 1
PIECE_SIZE = 1 << 20  # 1 MiB pieces: a SmolLM2 block (14 MB) is 14 pieces
MAX_MANIFEST_BYTES = 4 << 20
MAX_BLOCKS = 4096
SIGNATURE_CONTEXT = b"layerswarm-manifest-v1\n"


class ManifestError(ValueError):
    """A manifest that is malformed (wrong types, sizes, hashes) or whose signature does not check."""


class UntrustedManifest(ManifestError):
    """A well-formed, correctly signed manifest whose publisher is not on the trusted list."""


def canonical_json(value: Any) -> bytes:
    """The one byte form of ``value`` that is hashed and signed (sorted keys, no spaces, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def piece_hashes(data: bytes, piece_size: int = PIECE_SIZE) -> tuple[str, ...]:
    """SHA-256 of each ``piece_size`` slice of ``data`` (the last one may be shorter)."""
    return tuple(hashlib.sha256(data[i : i + piece_size]).hexdigest() for i in range(0, max(len(data), 1), piece_size))


def span_digest(block_digests: Iterable[str]) -> str:
    """What a node reports of the blocks it loaded: the SHA-256 of their object hashes joined by ``,``."""
    return hashlib.sha256(",".join(block_digests).encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"bad base64: {exc}") from None


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def key_id(public_key: bytes) -> str:
    """A publisher's id: the SHA-256 (hex) of its raw Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()


def publisher_key_text(public_key: bytes) -> str:
    """The text form of a publisher key, ``ed25519:<base64url>`` (what trusted-publisher lists hold)."""
    return f"ed25519:{_b64(public_key)}"


def parse_publisher_key(text: str) -> bytes:
    """The raw 32-byte Ed25519 key of ``ed25519:<base64url>`` (or of a node's ``ed25519:...,x25519:...``).

    Raises:
        ManifestError: not such a key.
    """
    text = text.strip()
    for part in text.split(","):  # a node's announced key "ed25519:...,x25519:..." works too
        if part.startswith("ed25519:"):
            raw = _unb64(part[len("ed25519:") :])
            if len(raw) == 32:
                return raw
    raise ManifestError(f"not an ed25519 public key: {text[:80]!r}")


def _digest(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ManifestError(f"{what} is not a SHA-256 hex digest")
    return value


def _count(value: Any, what: str, limit: int = 1 << 50) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ManifestError(f"{what} must be an integer in [0, {limit}]")
    return value


@dataclass(frozen=True)
class ObjectRef:
    """One object of a model: its hash, size and piece hashes."""

    digest: str
    size: int
    pieces: tuple[str, ...]

    def to_json(self) -> dict:
        """The JSON form inside a manifest."""
        return {"digest": self.digest, "size": self.size, "pieces": list(self.pieces)}

    @classmethod
    def from_json(cls, value: Any, piece_size: int, what: str) -> ObjectRef:
        """Parse and check one object entry (types, sizes, the piece count its size implies)."""
        if not isinstance(value, dict) or set(value) != {"digest", "size", "pieces"}:
            raise ManifestError(f"{what} must be an object with digest, size and pieces")
        size = _count(value["size"], f"{what}.size")
        pieces = value["pieces"]
        expected = max(1, -(-size // piece_size))
        if not isinstance(pieces, list) or len(pieces) != expected:
            raise ManifestError(f"{what} must list {expected} piece hashes for {size} bytes")
        return cls(
            _digest(value["digest"], f"{what}.digest"),
            size,
            tuple(_digest(p, f"{what}.pieces") for p in pieces),
        )


@dataclass(frozen=True)
class Manifest:
    """What a model is made of, object by object (see the module's description)."""

    name: str
    config: dict
    layer_prefix: str  # the checkpoint's block list, e.g. "model.layers" (block i's tensors: "model.layers.i.*")
    blocks: tuple[ObjectRef, ...]
    client: ObjectRef
    tokenizer: ObjectRef
    dtype: str
    publisher: str  # key_id() of the publisher's key
    piece_size: int = PIECE_SIZE
    format: int = FORMAT

    def to_json(self) -> dict:
        """The manifest as JSON (what is hashed and signed, through :func:`canonical_json`)."""
        return {
            "format": self.format,
            "name": self.name,
            "config": self.config,
            "layer_prefix": self.layer_prefix,
            "blocks": [b.to_json() for b in self.blocks],
            "client": self.client.to_json(),
            "tokenizer": self.tokenizer.to_json(),
            "dtype": self.dtype,
            "publisher": self.publisher,
            "piece_size": self.piece_size,
            "total_size": self.total_size,
        }

    @property
    def digest(self) -> str:
        """The model's identity: SHA-256 of the canonical JSON."""
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    @property
    def total_size(self) -> int:
        """Bytes of all the model's objects."""
        return sum(o.size for o in self.objects())

    def objects(self) -> list[ObjectRef]:
        """Every object: tokenizer, client part, then the blocks in order."""
        return [self.tokenizer, self.client, *self.blocks]

    def span_objects(self, start: int, end: int) -> list[ObjectRef]:
        """The objects a node serving blocks [start, end) needs (plus the tokenizer's, for its config)."""
        if not 0 <= start < end <= len(self.blocks):
            raise ValueError(f"blocks {start}:{end} are not inside the model's {len(self.blocks)} blocks")
        return [self.tokenizer, *self.blocks[start:end]]

    def span_digest(self, start: int, end: int) -> str:
        """The :func:`span_digest` a node serving blocks [start, end) of this model reports."""
        return span_digest(b.digest for b in self.blocks[start:end])

    @classmethod
    def from_json(cls, value: Any) -> Manifest:
        """Parse and check a manifest (strict: unknown or missing fields are errors)."""
        fields = {
            "format", "name", "config", "layer_prefix", "blocks", "client", "tokenizer", "dtype", "publisher",
            "piece_size", "total_size",
        }  # fmt: skip
        if not isinstance(value, dict) or set(value) != fields:
            raise ManifestError(f"a manifest has exactly the fields {sorted(fields)}")
        if type(value["format"]) is not int or value["format"] != FORMAT:  # true == 1.0 == 1 in Python, not here
            raise ManifestError(f"manifest format {value['format']!r} is not supported (this node reads {FORMAT})")
        piece_size = _count(value["piece_size"], "piece_size", 1 << 30)
        if piece_size < 4096:
            raise ManifestError("piece_size must be at least 4096 bytes")
        for key in ("name", "layer_prefix", "dtype"):
            if not isinstance(value[key], str) or not 0 < len(value[key]) <= 256:
                raise ManifestError(f"{key} must be a non-empty string of at most 256 characters")
        if not isinstance(value["config"], dict):
            raise ManifestError("config must be an object")
        blocks = value["blocks"]
        if not isinstance(blocks, list) or not 0 < len(blocks) <= MAX_BLOCKS:
            raise ManifestError(f"blocks must be a list of 1 to {MAX_BLOCKS} objects")
        manifest = cls(
            name=value["name"],
            config=value["config"],
            layer_prefix=value["layer_prefix"],
            blocks=tuple(ObjectRef.from_json(b, piece_size, f"blocks[{i}]") for i, b in enumerate(blocks)),
            client=ObjectRef.from_json(value["client"], piece_size, "client"),
            tokenizer=ObjectRef.from_json(value["tokenizer"], piece_size, "tokenizer"),
            dtype=value["dtype"],
            publisher=_digest(value["publisher"], "publisher"),
            piece_size=piece_size,
        )
        if type(value["total_size"]) is not int or value["total_size"] != manifest.total_size:
            raise ManifestError("total_size is not the sum of the objects' sizes")
        return manifest


@dataclass(frozen=True)
class SignedManifest:
    """A manifest with its publisher's public key and Ed25519 signature over its canonical JSON."""

    manifest: Manifest
    public_key: bytes
    signature: bytes

    @classmethod
    def sign(cls, manifest: Manifest, private_key: Ed25519PrivateKey) -> SignedManifest:
        """Sign ``manifest`` (its ``publisher`` must be this key's id)."""
        public = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if manifest.publisher != key_id(public):
            raise ManifestError("the manifest names another publisher than the signing key")
        return cls(manifest, public, private_key.sign(SIGNATURE_CONTEXT + canonical_json(manifest.to_json())))

    def signature_valid(self) -> bool:
        """Whether the signature checks against the enclosed key, and that key is the named publisher."""
        if len(self.public_key) != 32 or key_id(self.public_key) != self.manifest.publisher:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                self.signature, SIGNATURE_CONTEXT + canonical_json(self.manifest.to_json())
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_bytes(self) -> bytes:
        """The file form: canonical JSON of ``{"manifest", "public_key", "signature"}``."""
        return canonical_json(
            {
                "manifest": self.manifest.to_json(),
                "public_key": publisher_key_text(self.public_key),
                "signature": _b64(self.signature),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        """Parse a signed manifest (does not decide trust: see :meth:`TrustedPublishers.check`).

        Raises:
            ManifestError: too large, not JSON, malformed.
        """
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"a manifest is at most {MAX_MANIFEST_BYTES} bytes")
        try:
            value = json.loads(data, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ManifestError(f"a manifest must be JSON: {exc}") from None
        if not isinstance(value, dict) or set(value) != {"manifest", "public_key", "signature"}:
            raise ManifestError("a signed manifest has exactly manifest, public_key and signature")
        if not isinstance(value["public_key"], str) or not isinstance(value["signature"], str):
            raise ManifestError("public_key and signature must be strings")
        return cls(
            Manifest.from_json(value["manifest"]), parse_publisher_key(value["public_key"]), _unb64(value["signature"])
        )


class TrustedPublishers:
    """The publisher keys whose manifests this node or client accepts."""

    def __init__(self, keys: Iterable[str | bytes] = ()) -> None:
        self._keys: set[bytes] = set()
        for key in keys:
            self.add(key)

    def add(self, key: str | bytes) -> None:
        """Trust ``key`` (raw 32 bytes, or text ``ed25519:<base64url>``)."""
        raw = key if isinstance(key, bytes) else parse_publisher_key(key)
        if len(raw) != 32:
            raise ManifestError("an ed25519 public key is 32 bytes")
        self._keys.add(raw)

    @classmethod
    def from_file(cls, path: str | Path) -> TrustedPublishers:
        """One key per line (``ed25519:...``); blank lines and ``#`` comments ignored. A missing file: none."""
        path = Path(path)
        if not path.exists():
            return cls()
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        return cls(line for line in lines if line)

    def add_from(self, items: Iterable[str]) -> None:
        """Trust each of ``items``: a key (``ed25519:...``), or a file of keys (as :meth:`from_file` reads).

        Raises:
            ManifestError: an item that is neither a key nor a readable file of keys (it names the item).
        """
        for item in items:
            path = Path(item).expanduser()
            try:
                if path.is_file():
                    for key in TrustedPublishers.from_file(path)._keys:
                        self.add(key)
                else:
                    self.add(item)
            except (ManifestError, OSError) as exc:
                raise ManifestError(f"trusted key {item[:80]!r}: {exc}") from None

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, signed: SignedManifest) -> Manifest:
        """The manifest, when its signature is valid and its publisher trusted.

        Raises:
            ManifestError: the signature does not check (tampered manifest, wrong key).
            UntrustedManifest: signed correctly, by a key not on this list.
        """
        if not signed.signature_valid():
            raise ManifestError(
                f"the signature of manifest {signed.manifest.name!r} does not check: it was altered after signing"
                " or signed by another key than it names"
            )
        if signed.public_key not in self._keys:
            raise UntrustedManifest(
                f"manifest {signed.manifest.name!r} is signed by {publisher_key_text(signed.public_key)}, which is not"
                " a trusted publisher: add the key to the trusted list if you trust it"
            )
        return signed.manifest
