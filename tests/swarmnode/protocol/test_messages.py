"""Wire codec (spec §2-§4): round trips and refusals of malformed frames."""

import msgpack
import numpy as np
import pytest

from swarmnode.protocol import (
    Error,
    Info,
    InfoReply,
    Limits,
    OpenSession,
    ProtocolError,
    Step,
    StepResult,
    decode,
    encode,
    tensor_from_numpy,
)


def _code(frame, limits=None) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(frame, limits)
    return info.value.code


def test_it_round_trips_every_field_of_a_step():
    hidden = tensor_from_numpy(np.arange(12, dtype=np.float32).reshape(1, 2, 6))
    msg = Step(id=7, session_id="s1", position=5, hidden=hidden)
    back = decode(encode(msg))
    assert back == msg
    assert np.array_equal(back.hidden.to_numpy(), hidden.to_numpy())
    assert back.skip_signature is False  # results are signed unless the client says otherwise (§11.2)
    assert decode(encode(Step(id=8, session_id="s1", skip_signature=True))).skip_signature is True


def test_it_round_trips_replies():
    for msg in (
        InfoReply(id=1, model="m", start_block=0, end_block=3, num_blocks=6, hidden_size=64),
        Error(id=2, code="bad_frame", message="x"),
        StepResult(id=3, session_id="a", position=9, compute_us=12),
        OpenSession(id=4, session_id="a", max_length=10),
        Info(id=5),
    ):
        assert decode(encode(msg)) == msg


def test_it_encodes_tensors_little_endian():
    t = tensor_from_numpy(np.array([1.0], dtype=np.float32))
    assert t.data == b"\x00\x00\x80\x3f"


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\xc1", "bad_frame"),  # never-used msgpack byte  (spec §2.1)
        (b"", "bad_frame"),
        (msgpack.packb([1, 2, 3]), "bad_frame"),  # not a map
        (msgpack.packb({"v": 2, "type": "info"}), "bad_version"),  # spec §2.3
        (msgpack.packb({"type": "info"}), "bad_version"),
        (msgpack.packb({"v": 1, "type": "launch_missiles"}), "unknown_type"),
        (msgpack.packb({"v": 1, "type": "step", "id": "x"}), "bad_field"),
        (msgpack.packb({"v": 1, "type": "step", "id": 1, "position": True}), "bad_field"),
        (msgpack.packb({"v": 1, "type": "step", "id": 1, "position": 2**63}), "bad_field"),
        (msgpack.packb({"v": 1, "type": "step", "id": 1, "session_id": 5}), "bad_field"),
        (msgpack.packb({"v": 1, "type": "step", "id": 1, "skip_signature": 1}), "bad_field"),  # a boolean
        (msgpack.packb({"v": 1, "type": "step", "id": 1, "skip_signature": "yes"}), "bad_field"),
        (msgpack.packb({"v": 1, "type": "info", "id": 1, "x": msgpack.ExtType(1, b"evil")}), "bad_frame"),
        (msgpack.packb({1: 2}), "bad_frame"),  # non-string keys (spec §2.1)
    ],
)
def test_it_refuses_malformed_frames(frame, code):
    assert _code(frame) == code


def test_it_refuses_text_frames():
    assert _code("hello") == "bad_frame"


def test_it_refuses_frames_over_the_limit_before_parsing():
    big = encode(Step(id=1, session_id="s", hidden=tensor_from_numpy(np.zeros((1, 100, 64), np.float32))))
    assert _code(big, Limits(max_frame_bytes=1000)) == "frame_too_large"


@pytest.mark.parametrize(
    "tensor, code",
    [
        ({"dtype": "float64", "shape": [1], "data": b"\x00" * 8}, "bad_dtype"),  # spec §3.1
        ({"dtype": "int8", "shape": [1], "data": b"\x00"}, "bad_dtype"),
        ({"dtype": "float32", "shape": [2], "data": b"\x00" * 4}, "bad_tensor"),  # spec §3.2
        ({"dtype": "float32", "shape": [-1], "data": b""}, "bad_shape"),
        ({"dtype": "float32", "shape": [1, 1, 1, 1, 1], "data": b"\x00" * 4}, "bad_shape"),
        ({"dtype": "float32", "shape": "1", "data": b"\x00" * 4}, "bad_shape"),
        ({"dtype": "float32", "shape": [1], "data": "abcd"}, "bad_tensor"),
        ([1, 2], "bad_tensor"),
    ],
)
def test_it_refuses_bad_tensors(tensor, code):
    frame = msgpack.packb({"v": 1, "type": "step", "id": 1, "session_id": "s", "hidden": tensor})
    assert _code(frame) == code
