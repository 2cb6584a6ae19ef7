"""Relay envelope (spec §9): frames are type-checked; relay addresses are recognised."""

import msgpack
import pytest

from swarmnode.protocol import ProtocolError
from swarmnode.protocol.relay import pack, pack_data, relay_key_id, unpack


def test_it_round_trips_data_frames():
    frame = pack_data(7, b"\x00opaque")
    assert unpack(frame, 1024) == {"type": "relay_data", "conn": 7, "data": b"\x00opaque"}


def test_it_fills_optional_fields():
    assert unpack(pack("relay_close", conn=3), 1024)["reason"] == ""


@pytest.mark.parametrize(
    "body, code",
    [
        ({"v": 1, "type": "relay_data", "conn": "7", "data": b""}, "bad_field"),
        ({"v": 1, "type": "relay_data", "conn": True, "data": b""}, "bad_field"),
        ({"v": 1, "type": "relay_data", "conn": 1}, "bad_field"),
        ({"v": 1, "type": "relay_data", "conn": 1, "data": "text"}, "bad_field"),
        ({"v": 2, "type": "relay_data", "conn": 1, "data": b""}, "bad_version"),
        ({"v": 1, "type": "teleport"}, "unknown_type"),
        ([1, 2], "bad_frame"),
    ],
)
def test_it_refuses_malformed_frames(body, code):
    with pytest.raises(ProtocolError) as err:
        unpack(msgpack.packb(body), 1024)
    assert err.value.code == code


def test_it_refuses_oversized_text_and_unexpected_frames():
    with pytest.raises(ProtocolError, match="exceeds"):
        unpack(pack_data(1, bytes(2000)), 1024)
    with pytest.raises(ProtocolError):
        unpack("text", 1024)
    with pytest.raises(ProtocolError) as err:
        unpack(pack("relay_open", conn=1), 1024, {"relay_data"})
    assert err.value.code == "unexpected_message"


def test_it_recognises_relay_addresses():
    kid = "A" * 23 + "_"
    assert relay_key_id(f"ws://h:1/layerswarm/v1/relay/{kid}") == kid
    assert relay_key_id(f"wss://portal.example/ws/relay/{kid}/") == kid
    assert relay_key_id("ws://h:1/layerswarm/v1") is None
    assert relay_key_id(f"ws://h:1/layerswarm/v1/relay/{kid[:-1]}") is None
    assert relay_key_id(f"ws://h:1/other/{kid}") is None
