"""Versioned wire messages and their msgpack codec (spec §2, §4).

Every frame is one msgpack map ``{"v": 1, "type": ..., "id": ..., ...fields}``. Decoding never
executes anything a peer sends: msgpack ext types are refused, sizes are bounded, and every
field is type-checked before a message object exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import msgpack

from swarmnode.protocol.errors import ProtocolError
from swarmnode.protocol.framing import unpack
from swarmnode.protocol.tensors import WireTensor, tensor_from_wire

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Limits:
    """Hard limits a node enforces on what peers send (spec §6); what one frame's msgpack may hold is
    in :mod:`swarmnode.protocol.framing`."""

    max_frame_bytes: int = 64 * 1024 * 1024  # whole frame, envelope included
    max_tokens_per_step: int = 4096  # sequence positions in one Step/Forward
    max_batch: int = 64  # sequences in one Step/Forward
    max_session_id_len: int = 128
    max_session_length: int = 8192  # tokens one session may hold in cache


@dataclass(frozen=True)
class Message:
    """Base of all messages; ``id`` pairs a reply with its request (spec §2.2)."""

    id: int = 0
    TYPE = ""


@dataclass(frozen=True)
class Info(Message):
    """Ask a node what it serves."""

    TYPE = "info"


@dataclass(frozen=True)
class InfoReply(Message):
    """What a node serves and how much room it has left."""

    TYPE = "info_reply"
    model: str = ""
    start_block: int = 0
    end_block: int = 0
    num_blocks: int = 0
    hidden_size: int = 0
    dtype: str = "float32"
    backend: str = ""
    device: str = ""
    version: str = ""
    cache_tokens_left: int = 0
    max_session_length: int = 0
    open_sessions: int = 0
    throughput: float = 0.0  # tokens/s of one-token cached steps through the whole span (§4.7)
    prefill_throughput: float = 0.0  # tokens/s of a long uncached prefill through the span (§4.7)
    state: str = "online"  # "online", or "draining" while the node is about to move or leave (§4.8)
    public_key: str = ""  # "ed25519:<b64url>,x25519:<b64url>": signs results, agrees session keys (§1.4)
    manifest: str = ""  # identity of the signed model manifest the span was loaded from (§4.10); "" = none claimed
    span_digest: str = ""  # SHA-256 of the loaded blocks' object hashes, comma-joined (§4.10); "" = not computed


@dataclass(frozen=True)
class OpenSession(Message):
    """Start an inference session that keeps a KV cache of up to ``max_length`` tokens."""

    TYPE = "open_session"
    session_id: str = ""
    max_length: int = 0
    dtype: str = "float32"
    push_key: str = ""  # secret that lets other nodes push steps into this session (§7); "" = no push
    prefix_salt: str = ""  # sessions with the same salt reuse each other's first-prompt prefixes (§4.9); "" = none


@dataclass(frozen=True)
class SessionOpened(Message):
    """The node reserved cache room for the session."""

    TYPE = "session_opened"
    session_id: str = ""
    cache_tokens_left: int = 0


@dataclass(frozen=True)
class Step(Message):
    """Run hidden states ``(B, T, H)`` at cache position ``position`` through the span."""

    TYPE = "step"
    session_id: str = ""
    position: int = 0
    hidden: WireTensor | None = None
    push_key: str = ""  # the session's push key: marks a pushed step (§7)
    route: tuple[str, ...] = ()  # the next hops' URLs, in order, for server-to-server push (§7)
    skip_signature: bool = False  # no §11 signature wanted (a client that checks none): saves the node work


@dataclass(frozen=True)
class StepResult(Message):
    """The span's output for a Step; ``position`` is the cache length after the step."""

    TYPE = "step_result"
    session_id: str = ""
    position: int = 0
    hidden: WireTensor | None = None
    compute_us: int = 0  # time the node spent computing, for routing and adaptive timeouts
    signature: str = ""  # base64url Ed25519 signature of the result digest (§11); "" from unsigned nodes
    cached_tokens: int = 0  # leading positions taken from an earlier prompt instead of computed (§4.9)


@dataclass(frozen=True)
class Forward(Message):
    """Run hidden states ``(B, T, H)`` through the span without any cache."""

    TYPE = "forward"
    hidden: WireTensor | None = None
    lengths: tuple[int, ...] = ()  # real positions of each row, the rest right padding (§4.4, encoders); () = all T


@dataclass(frozen=True)
class ForwardResult(Message):
    """The span's output for a Forward."""

    TYPE = "forward_result"
    hidden: WireTensor | None = None
    compute_us: int = 0
    signature: str = ""  # base64url Ed25519 signature of the result digest (§11)


@dataclass(frozen=True)
class CloseSession(Message):
    """End a session and free its cache."""

    TYPE = "close_session"
    session_id: str = ""
    receipt: str = ""  # the client's usage receipt, canonical bytes as base64url (§8); "" = none
    client_signature: str = ""  # the client's Ed25519 signature of the receipt, base64url (§8)


@dataclass(frozen=True)
class SessionClosed(Message):
    """The session is gone; its cache is free."""

    TYPE = "session_closed"
    session_id: str = ""
    tokens: int = 0  # positions the node ran through its span in this session (§8.2)
    node_signature: str = ""  # the node's countersignature of the client's receipt, base64url (§8)
    receipt_error: str = ""  # why the node did not countersign (§8.3); "" when it did or got no receipt


@dataclass(frozen=True)
class Error(Message):
    """A request failed; ``code`` is one of spec §5."""

    TYPE = "error"
    code: str = ""
    message: str = ""
    session_id: str = ""


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Info,
        InfoReply,
        OpenSession,
        SessionOpened,
        Step,
        StepResult,
        Forward,
        ForwardResult,
        CloseSession,
        SessionClosed,
        Error,
    )
}

_FIELD_TYPES = {
    "int": int,
    "str": str,
    "float": float,
    "bool": bool,
    "tuple[str, ...]": tuple,
    "tuple[int, ...]": list,  # a marker: decoded as a tuple of integers
    "WireTensor | None": WireTensor,
}
_MAX_LIST_ITEMS = 64


# Per message class: its fields as (name, expected Python type or None), looked up once (a client or
# node codes several frames per token; dataclasses.fields() on each costs more than the rest).
_SPECS: dict[type, tuple[tuple[str, type | None], ...]] = {}


def _spec(cls: type) -> tuple[tuple[str, type | None], ...]:
    spec = _SPECS.get(cls)
    if spec is None:
        spec = _SPECS[cls] = tuple((f.name, _FIELD_TYPES.get(str(f.type))) for f in fields(cls))
    return spec


def encode(message: Message) -> bytes:
    """Serialize a message to one binary frame."""
    body: dict = {"v": PROTOCOL_VERSION, "type": message.TYPE}
    for name, _ in _spec(type(message)):
        value = getattr(message, name)
        body[name] = value.to_wire() if isinstance(value, WireTensor) else value
    return msgpack.packb(body, use_bin_type=True)


def decode(frame: bytes | str, limits: Limits | None = None) -> Message:
    """Parse and type-check one frame.

    Raises:
        ProtocolError: ``frame_too_large``, ``bad_frame``, ``bad_version``, ``unknown_type``,
            ``bad_field`` or a tensor error from :func:`tensor_from_wire`.
    """
    limits = limits or Limits()
    if isinstance(frame, str):
        raise ProtocolError("bad_frame", "frames must be binary msgpack, not text")
    if len(frame) > limits.max_frame_bytes:
        raise ProtocolError(
            "frame_too_large", f"frame of {len(frame)} bytes exceeds the limit of {limits.max_frame_bytes}"
        )
    body = unpack(frame, max_bin_bytes=limits.max_frame_bytes)  # bounded while it unpacks (§6.2)
    if not isinstance(body, dict):
        raise ProtocolError("bad_frame", "a frame must be a msgpack map")
    if body.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"protocol version {body.get('v')!r} not supported; use 1")
    kind = body.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None  # a list or map is unhashable (found by fuzzing)
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {str(kind)[:64]!r}")
    kwargs = {}
    for name, expected in _spec(cls):
        if name not in body:
            continue
        value = body[name]
        if expected is WireTensor:
            value = tensor_from_wire(value) if value is not None else None
        elif expected is bool:
            if not isinstance(value, bool):
                raise ProtocolError("bad_field", f"{name} must be true or false")
        elif expected is int:
            if not isinstance(value, int) or isinstance(value, bool) or not -(2**62) < value < 2**62:
                raise ProtocolError("bad_field", f"{name} must be an integer")
        elif expected is str:
            if not isinstance(value, str) or len(value) > 4096:
                raise ProtocolError("bad_field", f"{name} must be a short string")
        elif expected is float:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ProtocolError("bad_field", f"{name} must be a finite number")
            value = float(value)
        elif expected is tuple:
            if (
                not isinstance(value, list)
                or len(value) > _MAX_LIST_ITEMS
                or not all(isinstance(v, str) and len(v) <= 4096 for v in value)
            ):
                raise ProtocolError("bad_field", f"{name} must be a list of at most {_MAX_LIST_ITEMS} short strings")
            value = tuple(value)
        elif expected is list:
            if (
                not isinstance(value, list)
                or len(value) > _MAX_LIST_ITEMS
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 for v in value)
            ):
                raise ProtocolError("bad_field", f"{name} must be a list of at most {_MAX_LIST_ITEMS} small integers")
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


__all__ = [
    "PROTOCOL_VERSION",
    "Limits",
    "Message",
    "MESSAGE_TYPES",
    "encode",
    "decode",
] + [cls.__name__ for cls in MESSAGE_TYPES.values()]
