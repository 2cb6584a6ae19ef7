"""What one frame's msgpack may hold (spec §6.2): frames that expand when unpacked are refused with
``bad_frame`` without being built, and every legitimate message still decodes."""

import tracemalloc

import msgpack
import numpy as np
import pytest

from swarmnode.protocol import (
    MESSAGE_TYPES,
    CloseSession,
    Error,
    InfoReply,
    OpenSession,
    ProtocolError,
    SessionClosed,
    Step,
    StepResult,
    decode,
    encode,
    tensor_from_numpy,
)
from swarmnode.protocol import relay as envelope
from swarmnode.protocol.framing import MAX_ARRAY_ITEMS, MAX_CONTAINERS, MAX_MAP_ITEMS, MAX_STR_BYTES

MIB = 1 << 20
LONGEST = "\U0001f600" * 4096  # the longest string a field may hold, in the widest UTF-8 (4 bytes a character)


def _empty_maps(n: int) -> bytes:
    """``[{}, {}, ...]``: one byte per map on the wire, ~64 bytes per dict once unpacked."""
    return b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n


def _array_tree(fanout: int = 64, depth: int = 4) -> bytes:
    """A step whose route is a tree of ``fanout``-item arrays: each array within the per-array limit."""
    header = b"\xdc" + fanout.to_bytes(2, "big")
    tree = header + b"\x90" * fanout
    for _ in range(depth - 1):
        tree = header + tree * fanout
    head = {"v": 1, "type": "step", "id": 1}
    return b"\x84" + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in head.items()) + b"\xa5route" + tree


def _bad_frame(frame: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.code == "bad_frame", info.value
    return info.value.message


@pytest.mark.parametrize(
    "frame",
    [_empty_maps(16 * MIB), _array_tree(), b"\x91" * 100_000 + b"\x90"],
    ids=["empty-maps", "array-tree", "deep-nesting"],
)
def test_it_refuses_frames_that_expand_when_unpacked_without_building_them(frame):
    """§6.2: 16 MiB that would unpack to ~1 GB of dicts or lists costs less than a megabyte to refuse."""
    tracemalloc.start()
    try:
        _bad_frame(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MIB


def test_it_counts_every_map_and_array_in_a_frame():
    """§6.2: at most 16 maps and arrays in all, however they nest."""
    route = [[] for _ in range(MAX_CONTAINERS)]  # with the frame itself: one too many
    assert "maps and arrays" in _bad_frame(msgpack.packb({"v": 1, "type": "step", "id": 1, "route": route}))
    route = [[] for _ in range(MAX_CONTAINERS - 2)]  # with the frame and the route: exactly the budget
    with pytest.raises(ProtocolError) as info:  # within the frame limits, so the field check answers
        decode(msgpack.packb({"v": 1, "type": "step", "id": 1, "route": route}))
    assert info.value.code == "bad_field"


@pytest.mark.parametrize(
    "value",
    [
        {str(i): i for i in range(MAX_MAP_ITEMS + 1)},
        list(range(MAX_ARRAY_ITEMS + 1)),
        "x" * (MAX_STR_BYTES + 1),
    ],
    ids=["map", "array", "string"],
)
def test_it_refuses_containers_and_strings_over_the_limits(value):
    _bad_frame(msgpack.packb({"v": 1, "type": "info", "id": 1, "pad": value}))


def test_it_refuses_a_binary_value_claiming_more_than_the_frame_limit():
    frame = b"\x84\xa1v\x01\xa4type\xa4info\xa2id\x01\xa3pad\xc6" + (1 << 30).to_bytes(4, "big") + b"\x00" * 16
    _bad_frame(frame)


def test_it_refuses_extension_types_even_empty_ones():
    """§2.1: an ext of length 0 passes the ext length limit; the ext hook still refuses it."""
    _bad_frame(msgpack.packb({"v": 1, "type": "info", "id": 1, "x": msgpack.ExtType(1, b"")}))
    _bad_frame(msgpack.packb({"v": 1, "type": "info", "id": 1, "x": msgpack.ExtType(1, b"abcd")}))


def test_the_relay_envelope_refuses_the_same_frames():
    """§9: relay frames go through the same bounded unpacking."""
    for frame in (_empty_maps(MIB), _array_tree(depth=2), b"\x91" * 5000 + b"\x90"):
        with pytest.raises(ProtocolError) as info:
            envelope.unpack(frame, 64 * MIB)
        assert info.value.code == "bad_frame"
    data = envelope.pack_data(3, bytes(MIB))
    assert envelope.unpack(data, 2 * MIB)["data"] == bytes(MIB)


def _largest_messages():
    hidden = tensor_from_numpy(np.ones((2, 3, 4, 5), np.float32))  # 4 dimensions, the most allowed
    return [
        InfoReply(
            id=2**62 - 1,
            model=LONGEST,
            start_block=1,
            end_block=2,
            num_blocks=3,
            hidden_size=4,
            dtype=LONGEST,
            backend=LONGEST,
            device=LONGEST,
            version=LONGEST,
            cache_tokens_left=5,
            max_session_length=6,
            open_sessions=7,
            throughput=1.5,
            prefill_throughput=2.5,
            state=LONGEST,
            public_key=LONGEST,
        ),
        OpenSession(id=1, session_id=LONGEST, max_length=8, push_key=LONGEST, prefix_salt=LONGEST),
        Step(
            id=1,
            session_id=LONGEST,
            position=3,
            hidden=hidden,
            push_key=LONGEST,
            route=(LONGEST,) * 64,
            skip_signature=True,
        ),
        StepResult(id=1, session_id=LONGEST, position=4, hidden=hidden, signature=LONGEST, cached_tokens=2),
        CloseSession(id=1, session_id=LONGEST, receipt=LONGEST, client_signature=LONGEST),
        SessionClosed(id=1, session_id=LONGEST, tokens=9, node_signature=LONGEST, receipt_error=LONGEST),
        Error(id=1, code=LONGEST, message=LONGEST, session_id=LONGEST),
    ]


@pytest.mark.parametrize("message", _largest_messages(), ids=lambda m: m.TYPE)
def test_it_still_decodes_every_message_at_its_largest(message):
    """Every field at its §2.4 maximum (strings of 4096 four-byte characters, 64-item routes, 4-D tensors)."""
    assert decode(encode(message)) == message


def test_it_still_decodes_every_message_type_and_a_tensor_of_the_frame_limit():
    for cls in MESSAGE_TYPES.values():
        assert decode(encode(cls(id=1))) == cls(id=1)
    big = tensor_from_numpy(np.zeros((1, 4096, 4000), np.float32))  # 62.5 MiB: one bin near the 64 MiB limit
    frame = encode(Step(id=1, session_id="s", hidden=big))
    assert decode(frame).hidden.shape == (1, 4096, 4000)


def test_it_ignores_a_few_unknown_fields_as_before():
    """§2.4: forward compatibility survives the map limit (a newer peer may add fields)."""
    body = {"v": 1, "type": "info", "id": 3, **{f"future_{i}": i for i in range(MAX_MAP_ITEMS - 3)}}
    assert decode(msgpack.packb(body)).id == 3
