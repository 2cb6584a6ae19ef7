"""Fuzzing the frame decoder (spec §2-§6: ``protocol/framing.py``, ``messages.py``, ``tensors.py``,
``validation.py``): whatever a peer sends, decoding either returns a message or raises ``ProtocolError``,
never anything else, and never allocates more than a constant; valid messages round-trip."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from wire_strategies import (
    arbitrary_bytes,
    huge_declared,
    mutated,
    tensor_maps,
    valid_messages,
    valid_tensors,
    values,
    wrong_shape_frames,
)

from swarmnode.protocol import (
    Limits,
    ProtocolError,
    Step,
    WireTensor,
    all_finite,
    check_hidden,
    decode,
    encode,
    tensor_from_wire,
)
from swarmnode.protocol.framing import unpack

pytestmark = pytest.mark.fuzz
FUZZ = settings.get_profile("protocol-fuzz")
LIMITS = Limits()  # what a node runs with: 64 MiB frames


def decode_or_refuse(frame: bytes):
    """The decoder's contract: a message, or ProtocolError (anything else escapes and fails the test)."""
    try:
        message = decode(frame, LIMITS)
    except ProtocolError as exc:
        assert exc.code and exc.message
        return None
    assert decode(encode(message), LIMITS) == message  # whatever it accepted, it re-encodes faithfully
    return message


@FUZZ
@given(st.one_of(arbitrary_bytes, huge_declared))
@example(b"\xdd\xff\xff\xff\xff")  # an array declaring 4 G items, none present
@example(b"\xc6\x04\x00\x00\x01" + b"x" * 10)  # bin 32 declaring 64 MiB + 1
def test_framing_unpack_takes_any_bytes(bounded, frame):
    try:
        bounded(unpack, frame, LIMITS.max_frame_bytes)
    except ProtocolError as exc:
        assert exc.code == "bad_frame"


@FUZZ
@given(st.one_of(arbitrary_bytes, huge_declared))
def test_decode_takes_any_bytes(bounded, frame):
    bounded(decode_or_refuse, frame)


@FUZZ
@given(st.one_of(wrong_shape_frames(), values.map(lambda v: msgpack.packb(v, use_bin_type=True))))
@example(msgpack.packb({"v": 1, "type": []}))  # found by this test: an unhashable type crashed decode
@example(msgpack.packb({"v": 1, "type": "step", "hidden": {"dtype": [], "shape": [1], "data": b""}}))
def test_decode_takes_msgpack_of_any_shape(bounded, frame):
    bounded(decode_or_refuse, frame)


@FUZZ
@given(st.data())
def test_decode_takes_valid_frames_with_bytes_flipped_cut_or_inserted(bounded, data):
    frame = data.draw(valid_messages().map(encode))
    bounded(decode_or_refuse, data.draw(mutated(frame)))


@FUZZ
@given(valid_messages())
def test_valid_messages_round_trip(bounded, message):
    assert bounded(decode, encode(message), LIMITS) == message


@FUZZ
@given(st.one_of(tensor_maps, values), st.integers(1, 8))
@example({"dtype": "float32", "shape": [2**64 - 1, 2**64 - 1, 2**64 - 1, 2**64 - 1], "data": b""}, 4)
@example({"dtype": "float32", "shape": [1, 1, 1], "data": b"\x00\x00\xc0\x7f"}, 1)  # a NaN
def test_tensors_and_hidden_state_checks_take_anything(bounded, obj, hidden_size):
    """§3 and §6: a tensor from a pushed step goes through tensor_from_wire, then check_hidden."""
    try:
        tensor = bounded(tensor_from_wire, obj)
    except ProtocolError:
        return
    assert tensor.numel * {"float32": 4, "float16": 2, "bfloat16": 2}[tensor.dtype] == len(tensor.data)
    try:
        checked = bounded(check_hidden, tensor, hidden_size, LIMITS)
    except ProtocolError as exc:
        assert exc.code in {"bad_shape", "wrong_hidden_size", "too_many_tokens", "batch_too_large", "not_finite"}
        return
    assert all_finite(checked) and checked.shape[2] == hidden_size


@FUZZ
@given(valid_tensors(nan=True).filter(lambda t: t.numel > 0))
def test_non_finite_hidden_states_are_refused(bounded, tensor):
    """§3.3: NaN or infinity anywhere in a step's hidden states is ``not_finite``, never computed on."""
    hidden = WireTensor(tensor.dtype, (1, tensor.numel, 1), tensor.data)  # (B, T, H) with H = 1
    words = hidden.to_numpy()
    as_f32 = (words.astype("<u4") << 16).view("<f4") if hidden.dtype == "bfloat16" else words.astype("<f4")
    finite = bool(np.isfinite(as_f32).all())  # independent of all_finite's bit test for bfloat16
    step = bounded(decode, encode(Step(id=1, session_id="s", hidden=hidden)), LIMITS)
    try:
        check_hidden(step.hidden, 1, LIMITS)
    except ProtocolError as exc:
        assert exc.code == "not_finite" and not finite
    else:
        assert finite
