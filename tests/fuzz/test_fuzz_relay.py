"""Fuzzing the relay envelope (spec §9, ``protocol/relay.py``): a relay parses every frame an attached
node or a stranger sends, so ``unpack`` must return a checked map or raise ``ProtocolError``, within a
constant allocation; valid envelopes round-trip and ``relay_data`` carries its bytes untouched."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from wire_strategies import arbitrary_bytes, huge_declared, mutated, values

from swarmnode.protocol import ProtocolError
from swarmnode.protocol.relay import SCHEMAS, pack, unpack

pytestmark = pytest.mark.fuzz
FUZZ = settings.get_profile("protocol-fuzz")
MAX_FRAME = 1 << 20
_KINDS = sorted(SCHEMAS)
_VALID = {int: st.integers(-(2**62) + 1, 2**62 - 1), str: st.text(max_size=80), bytes: st.binary(max_size=512)}


def unpack_or_refuse(frame: bytes, allowed=None) -> dict | None:
    try:
        out = unpack(frame, MAX_FRAME, allowed)
    except ProtocolError as exc:
        assert exc.code in {"frame_too_large", "bad_frame", "bad_version", "unknown_type", "unexpected_message"} | {
            "bad_field"
        }
        return None
    schema = SCHEMAS[out["type"]]
    assert set(out) == {"type", *schema}  # exactly the schema's fields, each of its type
    for name, expected in schema.items():
        assert isinstance(out[name], expected) and not isinstance(out[name], bool)
    if allowed is not None:
        assert out["type"] in allowed
    return out


@st.composite
def valid_envelopes(draw) -> tuple[str, dict]:
    kind = draw(st.sampled_from(_KINDS))
    return kind, {name: draw(_VALID[expected]) for name, expected in SCHEMAS[kind].items()}


@st.composite
def wrong_shape_envelopes(draw) -> bytes:
    kind = draw(st.sampled_from(_KINDS))
    body = {
        "v": 1 if draw(st.integers(0, 9)) else draw(values),
        "type": kind if draw(st.integers(0, 9)) else draw(values),
    }
    for name, expected in SCHEMAS[kind].items():
        choice = draw(st.integers(0, 2))
        if choice:
            body[name] = draw(_VALID[expected] if choice == 1 else values)
    return msgpack.packb(body, use_bin_type=True)


@FUZZ
@given(st.one_of(arbitrary_bytes, huge_declared, st.text(max_size=64)))
@example("relay_hello")  # a text websocket message
def test_relay_unpack_takes_any_bytes(bounded, frame):
    bounded(unpack_or_refuse, frame)


@FUZZ
@given(
    st.one_of(wrong_shape_envelopes(), values.map(lambda v: msgpack.packb(v, use_bin_type=True))),
    st.one_of(st.none(), st.sets(st.sampled_from(_KINDS), max_size=3)),
)
@example(msgpack.packb({"v": 1, "type": ["relay_data"], "conn": 1, "data": b""}), None)
def test_relay_unpack_takes_msgpack_of_any_shape(bounded, frame, allowed):
    bounded(unpack_or_refuse, frame, allowed)


@FUZZ
@given(st.data())
def test_relay_unpack_takes_valid_envelopes_with_bytes_flipped_cut_or_inserted(bounded, data):
    kind, fields = data.draw(valid_envelopes())
    bounded(unpack_or_refuse, data.draw(mutated(pack(kind, **fields))))


@FUZZ
@given(valid_envelopes())
def test_valid_envelopes_round_trip(bounded, envelope):
    kind, fields = envelope
    assert bounded(unpack, pack(kind, **fields), MAX_FRAME) == {"type": kind, **fields}
