"""Signed DHT records: one per node and model, stored under each of the model's block keys it serves.

A record is a msgpack map of the :data:`~swarmnode.discovery.ANNOUNCED_FIELDS` of a node's
:class:`~swarmnode.discovery.PeerInfo` plus ``num_blocks``, ``hidden_size``, ``state`` and ``expires`` (a UNIX
time). The DHT value is ``msgpack({"r": record_bytes, "s": ed25519_signature})``, signed by the node's identity
key (the one named in the record's ``public_key``) over :data:`SIGNING_CONTEXT` + ``record_bytes``. The subkey
under which it is stored is the node id: the SHA-256 of the node's raw Ed25519 public key, in hex.

:func:`verify` is strict and runs on every read and every store (in the DHT's validator and again in
:func:`~swarmnode.dht.engine.DHTDiscovery.lookup`): a value that is oversized, unsigned, badly signed, expired,
claims another node's key (subkey != hash of the record's key), lies under a block its span does not hold or
under another model's key is dropped. Pure functions; no hivemind import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from typing import Any

import msgpack

from swarmnode.discovery import ANNOUNCED_FIELDS, PeerInfo
from swarmnode.trust.identity import NodeIdentity, parse_public_key, verify_signature

SIGNING_CONTEXT = b"layerswarm/dht-record/v1\n"
KEY_PREFIX = "layerswarm/v1"
MAX_VALUE_BYTES = 2048  # one signed record: a few hundred bytes in practice
MAX_TTL_S = 3600.0  # a record may claim to live at most this long from now
MAX_RECORDS_PER_KEY = 256  # records read per block key; the rest are dropped (a flood of fresh keys)
MAX_MODEL_CHARS = 200
MAX_URL_CHARS = 512
#: What every v1 record holds. Newer nodes may add fields (``PeerInfo`` grows: ``manifest``, ``span_digest``, ...)
#: and older peers must still store and pass their records on, so other fields are allowed: scalars only, at most
#: :data:`MAX_EXTRA_FIELDS` of them; a reader keeps those it knows (:func:`to_peer`) and ignores the rest.
REQUIRED_FIELDS = (
    "model",
    "start_block",
    "end_block",
    "url",
    "relay",
    "relay_capacity",
    "backend",
    "device",
    "dtype",
    "throughput",
    "cache_tokens_left",
    "max_session_length",
    "version",
    "public_key",
    "num_blocks",
    "hidden_size",
    "state",
    "expires",
)
MAX_EXTRA_FIELDS = 16
MAX_FIELD_NAME_CHARS = 40
STATES = ("online", "draining", "offline")  # "offline": the tombstone a node leaves on a graceful stop

_STR_FIELDS = {"model", "url", "backend", "device", "dtype", "version", "public_key", "state"}
_INT_FIELDS = {"start_block", "end_block", "relay_capacity", "cache_tokens_left", "max_session_length"}
_INT_FIELDS |= {"num_blocks", "hidden_size"}
_FLOAT_FIELDS = {"throughput", "expires"}


class InvalidRecord(ValueError):
    """A DHT value that :func:`verify` refuses; the message says why."""


def block_key(model: str, block: int) -> str:
    """The DHT key of ``model``'s block ``block`` (the records of every node serving it live there)."""
    return f"{KEY_PREFIX}/{model}/{block}"


def parse_block_key(key: str) -> tuple[str, int]:
    """``(model, block)`` of a :func:`block_key`.

    Raises:
        InvalidRecord: not a block key.
    """
    prefix, _, rest = key.partition("/v1/") if key.startswith(KEY_PREFIX + "/") else ("", "", "")
    model, _, block = rest.rpartition("/")
    if not prefix or not model or not block.isdigit():
        raise InvalidRecord(f"not a block key: {key[:100]!r}")
    return model, int(block)


def node_id(public_key: str) -> str:
    """The node id a record is stored under: SHA-256 of the raw Ed25519 public key, hex.

    Raises:
        ValueError: not a ``ed25519:...,x25519:...`` key string.
    """
    return hashlib.sha256(parse_public_key(public_key).ed25519).hexdigest()


def make_record(peer: PeerInfo, ttl: float, state: str | None = None, now: float | None = None) -> dict[str, Any]:
    """The record a node announces for ``peer`` (its own :class:`PeerInfo`), valid for ``ttl`` seconds."""
    record: dict[str, Any] = {name: getattr(peer, name) for name in ANNOUNCED_FIELDS}
    record.update(num_blocks=peer.num_blocks, hidden_size=peer.hidden_size, state=state or peer.state)
    record["expires"] = float((time.time() if now is None else now) + ttl)
    record["throughput"] = float(record["throughput"])
    record["relay"] = bool(record["relay"])
    return record


def sign(record: dict[str, Any], identity: NodeIdentity) -> bytes:
    """The DHT value of ``record`` signed by ``identity`` (whose public key the record must name).

    Raises:
        ValueError: the record names another key, or fails :func:`check_fields`.
    """
    if record.get("public_key") != identity.public_key:
        raise ValueError("a node signs only records that name its own key")
    check_fields(record)
    body = msgpack.packb(record)
    value = msgpack.packb({"r": body, "s": identity.sign(SIGNING_CONTEXT + body)})
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"the record is {len(value)} bytes, over the {MAX_VALUE_BYTES}-byte cap")
    return value


def signed(
    peer: PeerInfo, identity: NodeIdentity, ttl: float, state: str | None = None
) -> tuple[dict[str, Any], bytes]:
    """``(record, value)``: :func:`make_record` of ``peer`` signed into a DHT value by :func:`sign`."""
    record = make_record(peer, ttl, state)
    return record, sign(record, identity)


def check_fields(record: dict[str, Any]) -> None:
    """Every field of :data:`REQUIRED_FIELDS` present, of its type and within bounds; any other field a scalar.

    Raises:
        InvalidRecord: what is wrong.
    """
    missing = set(REQUIRED_FIELDS) - set(record)
    if missing:
        raise InvalidRecord(f"fields missing: {sorted(missing)[:5]}")
    extra = set(record) - set(REQUIRED_FIELDS)
    if len(extra) > MAX_EXTRA_FIELDS or any(not isinstance(k, str) or len(k) > MAX_FIELD_NAME_CHARS for k in extra):
        raise InvalidRecord("too many or badly named extra fields")
    for name in _STR_FIELDS:
        if not isinstance(record[name], str):
            raise InvalidRecord(f"{name} is no string")
    for name in _INT_FIELDS:
        if not isinstance(record[name], int) or isinstance(record[name], bool) or record[name] < 0:
            raise InvalidRecord(f"{name} is no non-negative integer")
    for name in _FLOAT_FIELDS:
        if not isinstance(record[name], float) or not math.isfinite(record[name]) or record[name] < 0:
            raise InvalidRecord(f"{name} is no finite non-negative number")
    for name in extra:
        if not isinstance(record[name], str | int | float | bool):  # fields PeerInfo gains later: scalars only
            raise InvalidRecord(f"{name} is no scalar")
    if not isinstance(record["relay"], bool):
        raise InvalidRecord("relay is no boolean")
    if not 0 <= record["start_block"] < record["end_block"] <= max(record["num_blocks"], record["end_block"]):
        raise InvalidRecord("the span is empty or outside the model")
    if record["num_blocks"] and record["end_block"] > record["num_blocks"]:
        raise InvalidRecord("the span ends past the model's last block")
    if record["state"] not in STATES:
        raise InvalidRecord(f"unknown state {record['state'][:20]!r}")
    if not 0 < len(record["model"]) <= MAX_MODEL_CHARS or len(record["url"]) > MAX_URL_CHARS:
        raise InvalidRecord("model name or URL too long")
    if record["state"] != "offline" and not record["url"].startswith(("ws://", "wss://")):
        raise InvalidRecord("the URL is not a websocket URL")


def verify(
    key: str | None, subkey: str, value: bytes, now: float | None = None, dht_expiration: float | None = None
) -> dict:
    """The record stored as ``value`` under ``key`` / ``subkey``, if it is valid there and now.

    Args:
        key: the block key (:func:`block_key`) it was stored under; None: the caller checks that itself (the
            engine sees only the key's hash: it compares it with the hashes of :func:`block_keys`).
        subkey: the node id it was stored under.
        value: the signed value (:func:`sign`).
        now: the current UNIX time (default: the clock's).
        dht_expiration: the DHT entry's own expiration time, which may not outlive the record's ``expires``.

    Returns:
        The record (a dict holding at least :data:`REQUIRED_FIELDS`).

    Raises:
        InvalidRecord: why it is refused.
    """
    now = time.time() if now is None else now
    if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
        raise InvalidRecord("not bytes, or oversized")
    try:
        outer = msgpack.unpackb(value, max_bin_len=MAX_VALUE_BYTES, max_str_len=64, max_map_len=2, max_array_len=0)
        body, signature = outer["r"], outer["s"]
        if not isinstance(body, bytes) or not isinstance(signature, bytes):
            raise TypeError("r and s must be bytes")
        record = msgpack.unpackb(
            body,
            max_str_len=MAX_URL_CHARS,
            max_bin_len=0,
            max_map_len=len(REQUIRED_FIELDS) + MAX_EXTRA_FIELDS,
            max_array_len=0,
        )
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise InvalidRecord(f"malformed or unsigned value ({type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise InvalidRecord("the record is no map")
    check_fields(record)
    try:
        keys = parse_public_key(record["public_key"])
    except ValueError:
        raise InvalidRecord("the record names no valid public key") from None
    if subkey != hashlib.sha256(keys.ed25519).hexdigest():
        raise InvalidRecord("stored under another node's id (a foreign-key record)")
    if not verify_signature(keys, signature, SIGNING_CONTEXT + body):
        raise InvalidRecord("bad signature")
    if record["expires"] <= now:
        raise InvalidRecord("expired")
    if record["expires"] > now + MAX_TTL_S:
        raise InvalidRecord("claims to live too long")
    if dht_expiration is not None and dht_expiration > record["expires"] + 1.0:
        raise InvalidRecord("the DHT entry outlives the record")
    if key is not None:
        model, block = parse_block_key(key)
        if model != record["model"] or not record["start_block"] <= block < record["end_block"]:
            raise InvalidRecord("stored under a block its span does not hold")
    return record


def block_keys(record: dict[str, Any]) -> list[str]:
    """The block keys a record belongs under: one per block of its span."""
    return [block_key(record["model"], b) for b in range(record["start_block"], record["end_block"])]


def to_peer(record: dict[str, Any]) -> PeerInfo:
    """The :class:`PeerInfo` a verified record describes (no tracker id, no reputation).

    Only announced fields are read (a record naming ``reputation`` or ``node_id`` does not set them), and an
    extra one only when of the field's type; the rest keep their defaults.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(PeerInfo)}
    readable = (set(ANNOUNCED_FIELDS) | set(REQUIRED_FIELDS)) & set(defaults) & set(record)
    values = {n: record[n] for n in readable if n in REQUIRED_FIELDS or type(record[n]) is type(defaults[n])}
    return PeerInfo(**values)
