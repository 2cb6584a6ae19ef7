"""Fields added for routing and push (spec §2.4 floats and string lists, §4.7, §4.8, §7)."""

import msgpack
import pytest

from swarmnode.protocol import InfoReply, OpenSession, ProtocolError, Step, decode, encode


def test_it_round_trips_throughput_state_and_push_fields():
    """§4.7, §4.8, §7.1, §7.2."""
    info = InfoReply(id=1, model="m", throughput=12.5, prefill_throughput=300.0, state="draining")
    assert decode(encode(info)) == info
    step = Step(id=2, session_id="s", push_key="k" * 16, route=("ws://127.0.0.1:1/layerswarm/v1", "ws://b"))
    assert decode(encode(step)) == step
    assert decode(encode(OpenSession(id=3, session_id="s", max_length=4, push_key="k" * 16))).push_key == "k" * 16


def test_it_reads_frames_of_older_peers_with_defaults():
    """§2.4: missing fields take their defaults."""
    frame = msgpack.packb({"v": 1, "type": "info_reply", "id": 1, "model": "m"})
    reply = decode(frame)
    assert reply.throughput == 0.0 and reply.state == "online"
    assert decode(msgpack.packb({"v": 1, "type": "step", "id": 1})).route == ()


@pytest.mark.parametrize(
    "field, value",
    [
        ("throughput", "fast"),
        ("throughput", True),
        ("throughput", float("nan")),
        ("throughput", float("inf")),
    ],
)
def test_it_refuses_bad_floats(field, value):
    """§2.4: floats are finite numbers."""
    frame = msgpack.packb({"v": 1, "type": "info_reply", "id": 1, field: value})
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.code == "bad_field"


@pytest.mark.parametrize("value", ["ws://a", [1, 2], ["x" * 5000], ["u"] * 65, {"a": 1}])
def test_it_refuses_bad_string_lists(value):
    """§2.4: string lists hold at most 64 strings of at most 4096 characters."""
    frame = msgpack.packb({"v": 1, "type": "step", "id": 1, "route": value})
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.code == "bad_field"
