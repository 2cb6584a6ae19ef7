"""The relay envelope (spec §9): frames between a relay and the nodes attached to it.

Sans-I/O: :func:`pack` builds a frame, :func:`unpack` parses and type-checks one. Frames are
msgpack maps ``{"v": 1, "type": ..., ...}`` like the node protocol's (§2); what a client sends
to a relayed node travels inside ``relay_data`` as opaque bytes that the relay never parses.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import msgpack

from swarmnode.protocol.errors import ProtocolError
from swarmnode.protocol.framing import unpack as unpack_bounded

# type -> {field: python type}; every field is required unless listed in _OPTIONAL.
SCHEMAS: dict[str, dict[str, type]] = {
    "relay_hello": {"id": int, "public_key": str, "token": str, "dial_back": str},
    "relay_challenge": {"id": int, "nonce": bytes, "relay": str},
    "relay_proof": {"id": int, "signature": bytes},
    "relay_registered": {
        "id": int,
        "address": str,
        "key_id": str,
        "reachable": str,
        "nodes": int,
        "capacity": int,
    },
    "relay_status": {"id": int},
    "relay_load": {"id": int, "nodes": int, "capacity": int, "clients": int},
    "relay_open": {"conn": int},
    "relay_data": {"conn": int, "data": bytes},
    "relay_close": {"conn": int, "reason": str},
    "error": {"id": int, "code": str, "message": str, "conn": int},
}
_OPTIONAL = {
    "relay_hello": {"token": "", "dial_back": "", "id": 0},
    "relay_challenge": {"id": 0, "relay": ""},
    "relay_proof": {"id": 0},
    "relay_registered": {"id": 0, "reachable": "unchecked", "nodes": 0, "capacity": 0},
    "relay_close": {"reason": ""},
    "relay_status": {"id": 0},
    "relay_load": {"id": 0, "clients": 0},
    "error": {"id": 0, "message": "", "conn": -1},
}
MAX_STRING = 4096
PROOF_CONTEXT = b"layerswarm relay proof v1\x00"


def proof_message(nonce: bytes, relay: str, public_key: str) -> bytes:
    """What a node signs with its Ed25519 key to attach to a relay (spec §9.2)."""
    return PROOF_CONTEXT + nonce + b"\x00" + relay.encode() + b"\x00" + public_key.encode()


def same_relay(named: str, dialled: str) -> bool:
    """Whether a challenge's ``relay`` names the relay the node dialled (spec §9.2): same host, port and path.

    The scheme is not compared (a relay behind a TLS-terminating proxy sees ``ws``); an explicit port must match
    (a missing one matches only a missing one), so one server cannot pass for another on the same host.
    """
    try:
        a, b = urlsplit(named), urlsplit(dialled)
        a_port, b_port = a.port, b.port
    except ValueError:
        return False
    if not a.hostname or a.hostname != b.hostname or a_port != b_port:
        return False
    return a.path.rstrip("/") == b.path.rstrip("/")


def pack(kind: str, **fields) -> bytes:
    """One relay frame of type ``kind`` (fields are not checked: we only pack what we built)."""
    return msgpack.packb({"v": 1, "type": kind, **fields}, use_bin_type=True)


def pack_data(conn: int, data: bytes) -> bytes:
    """The hot path: one ``relay_data`` frame."""
    return msgpack.packb({"v": 1, "type": "relay_data", "conn": conn, "data": data}, use_bin_type=True)


def unpack(frame: bytes | str, max_frame_bytes: int, allowed: frozenset[str] | set[str] | None = None) -> dict:
    """Parse one relay frame and check its fields' types.

    Args:
        frame: the websocket message.
        max_frame_bytes: bigger frames are refused.
        allowed: message types acceptable at this point (``None``: any of :data:`SCHEMAS`).

    Raises:
        ProtocolError: ``frame_too_large``, ``bad_frame``, ``bad_version``, ``unknown_type``
            (or a type not ``allowed``: ``unexpected_message``), ``bad_field``.
    """
    if isinstance(frame, str):
        raise ProtocolError("bad_frame", "relay frames must be binary msgpack, not text")
    if len(frame) > max_frame_bytes:
        raise ProtocolError("frame_too_large", f"frame of {len(frame)} bytes exceeds the limit of {max_frame_bytes}")
    body = unpack_bounded(frame, max_bin_bytes=max_frame_bytes)  # bounded while it unpacks (§6.2)
    if not isinstance(body, dict):
        raise ProtocolError("bad_frame", "a frame must be a msgpack map")
    if body.get("v") != 1:
        raise ProtocolError("bad_version", f"protocol version {body.get('v')!r} not supported; use 1")
    kind = body.get("type")
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ProtocolError("unknown_type", f"unknown relay message type {str(kind)[:64]!r}")
    if allowed is not None and kind not in allowed:
        raise ProtocolError("unexpected_message", f"{kind} not expected here (expected one of {sorted(allowed)})")
    out = {"type": kind}
    defaults = _OPTIONAL.get(kind, {})
    for name, expected in schema.items():
        if name not in body:
            if name not in defaults:
                raise ProtocolError("bad_field", f"{kind} needs {name}")
            out[name] = defaults[name]
            continue
        value = body[name]
        if expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and -(2**62) < value < 2**62
        elif expected is str:
            ok = isinstance(value, str) and len(value) <= MAX_STRING
        else:
            ok = isinstance(value, bytes)
        if not ok:
            raise ProtocolError("bad_field", f"{kind}.{name} must be {expected.__name__}")
        out[name] = value
    return out


KEY_ID_CHARS = 24


def relay_key_id(url: str) -> str | None:
    """The node key id in a relay address ``R/<key_id>`` (``R`` ends in ``/relay``), or ``None`` (spec §9.1)."""
    path = url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    head, _, last = path.rpartition("/")
    if not head.endswith("/relay") or len(last) != KEY_ID_CHARS:
        return None
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in last):
        return None
    return last
