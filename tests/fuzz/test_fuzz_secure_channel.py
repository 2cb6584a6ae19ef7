"""Fuzzing the secure channel's handshake and open paths (spec §10, ``trust/secure_channel.py``): a node
answers any stranger's ``secure_hello`` and a relay may alter any frame, so every path raises only
``ChannelError`` on bad input, within a constant allocation; an altered frame never opens to other
plaintext, an altered ``secure_ready`` never yields other keys; sealed frames round-trip."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from wire_strategies import arbitrary_bytes, huge_declared, mutated, values

from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import (
    SUITES,
    ChannelError,
    client_handshake,
    finish_handshake,
    is_handshake_frame,
    node_accept,
)

pytestmark = pytest.mark.fuzz
FUZZ = settings.get_profile("protocol-fuzz")
NODE = NodeIdentity.generate()  # one identity for all examples: key generation is not what is fuzzed
MAX_PLAINTEXT = 1 << 16
_suites = st.sampled_from(sorted(SUITES))


def pair(suite: str):
    hello, pending = client_handshake(NODE.public_key, suite)
    ready, node_side = node_accept(NODE, hello, max_plaintext=MAX_PLAINTEXT)
    return hello, ready, pending, finish_handshake(pending, ready, max_plaintext=MAX_PLAINTEXT), node_side


@st.composite
def hellos(draw) -> bytes:
    """Arbitrary bytes, a genuine hello mutated, or a hello-shaped map with fields of any type."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.one_of(arbitrary_bytes, huge_declared))
    genuine, _ = client_handshake(NODE.public_key, draw(_suites))
    if kind == 1:
        return draw(mutated(genuine))
    body = msgpack.unpackb(genuine)
    for name in ("v", "type", "id", "suite", "key", "node_key"):
        if draw(st.booleans()):
            body[name] = draw(values)
    return msgpack.packb(body, use_bin_type=True)


@FUZZ
@given(hellos())
@example(msgpack.packb({"v": 1, "type": "secure_hello", "suite": [], "key": b"k" * 32}))  # found: unhashable suite
def test_node_accept_takes_any_hello(bounded, frame):
    assert isinstance(is_handshake_frame(frame), bool)
    try:
        reply, channel = bounded(node_accept, NODE, frame, max_plaintext=MAX_PLAINTEXT)
    except ChannelError as exc:
        assert exc.code in {"bad_seal", "bad_handshake"}
        return
    assert msgpack.unpackb(reply)["type"] == "secure_ready" and channel.suite in SUITES


@FUZZ
@given(_suites, st.data())
def test_finish_handshake_never_accepts_an_altered_ready_with_other_keys(bounded, suite, data):
    hello, pending = client_handshake(NODE.public_key, suite)
    ready, node_side = node_accept(NODE, hello)
    if data.draw(st.booleans()):
        forged = data.draw(mutated(ready))
    else:
        body = msgpack.unpackb(ready)
        for name in data.draw(
            st.sets(st.sampled_from(["v", "type", "id", "suite", "key", "sig", "confirm"]), min_size=1)
        ):
            body[name] = data.draw(values)
        forged = msgpack.packb(body, use_bin_type=True)
    try:
        client = bounded(finish_handshake, pending, forged)
    except ChannelError:
        return
    assert node_side.open(client.seal(b"probe")) == b"probe"  # accepted only with the genuine keys


@FUZZ
@given(_suites, st.one_of(arbitrary_bytes, huge_declared, st.text(max_size=32)))
def test_open_takes_any_bytes(bounded, suite, frame):
    _, _, _, client, node_side = pair(suite)
    with pytest.raises(ChannelError):
        bounded(node_side.open, frame)
    with pytest.raises(ChannelError):
        node_side.open(client.seal(b"after"))  # the channel is dead after a bad frame (§10.4)


@FUZZ
@given(_suites, st.binary(max_size=512), st.data())
def test_an_altered_sealed_frame_never_opens_to_other_plaintext(bounded, suite, plaintext, data):
    _, _, _, client, node_side = pair(suite)
    frame = client.seal(plaintext)
    forged = data.draw(
        st.one_of(
            mutated(frame),
            st.builds(  # a well-formed sealed map with another seq or a box of any shape
                lambda seq, box: msgpack.packb({"v": 1, "type": "sealed", "seq": seq, "box": box}),
                st.one_of(st.just(0), values),
                st.one_of(st.binary(max_size=600), values),
            ),
        )
    )
    try:
        opened = bounded(node_side.open, forged)
    except ChannelError as exc:
        assert exc.code in {"bad_seal", "frame_too_large"} or len(exc.code) <= 64
        return
    assert opened == plaintext  # only a change that kept seq and box (e.g. re-encoded seq) may open


@FUZZ
@given(_suites, st.lists(st.tuples(st.booleans(), st.binary(max_size=2048)), max_size=8))
def test_sealed_frames_round_trip_both_ways(bounded, suite, frames):
    _, _, _, client, node_side = pair(suite)
    for upstream, plaintext in frames:
        sender, receiver = (client, node_side) if upstream else (node_side, client)
        assert bounded(receiver.open, sender.seal(plaintext)) == plaintext
