"""End-to-end channel (spec §10): handshake bound to the node's key; tampering, replay, reordering detected."""

import msgpack
import pytest

from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import (
    SUITES,
    ChannelError,
    client_handshake,
    finish_handshake,
    is_handshake_frame,
    key_id,
    node_accept,
)


def pair(suite="x25519-chacha20poly1305"):
    node = NodeIdentity.generate()
    hello, pending = client_handshake(node.public_key, suite)
    ready, node_side = node_accept(node, hello)
    return finish_handshake(pending, ready), node_side


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_it_carries_frames_both_ways_in_every_suite(suite):
    """§10.2-§10.3: both suites derive the same keys on both sides; sequence numbers advance per direction."""
    client, node = pair(suite)
    for i in range(3):
        assert node.open(client.seal(b"step %d" % i)) == b"step %d" % i
        assert client.open(node.seal(b"result %d" % i)) == b"result %d" % i


def test_it_hides_the_plaintext_from_whoever_forwards_the_frames():
    """§10.1: a relay sees only ciphertext."""
    client, _ = pair()
    secret = b"hidden states of the user's prompt" * 4
    frame = client.seal(secret)
    assert secret not in frame and b"hidden states" not in frame


def test_it_detects_a_flipped_bit():
    """§10.4: an altered frame fails to open and the channel is dead from then on."""
    client, node = pair()
    frame = bytearray(client.seal(b"payload"))
    frame[-3] ^= 0x01
    with pytest.raises(ChannelError, match="altered"):
        node.open(bytes(frame))
    with pytest.raises(ChannelError):
        node.open(client.seal(b"next"))  # no recovery after tampering


def test_it_detects_replayed_and_reordered_frames():
    """§10.4: only the next sequence number opens."""
    client, node = pair()
    first, second, third = client.seal(b"1"), client.seal(b"2"), client.seal(b"3")
    assert node.open(first) == b"1"
    with pytest.raises(ChannelError, match="replayed"):
        node.open(first)
    client2, node2 = pair()
    a, b = client2.seal(b"a"), client2.seal(b"b")
    with pytest.raises(ChannelError, match="out of order"):
        node2.open(b)
    del a, second, third


def test_it_refuses_a_frame_moved_to_another_direction_or_session():
    """§10.2: each direction and each connection has its own keys."""
    client, node = pair()
    other_client, other_node = pair()
    with pytest.raises(ChannelError):
        client.open(client.seal(b"echo"))  # a client frame reflected back
    with pytest.raises(ChannelError):
        other_node.open(client.seal(b"x"))


def test_it_rejects_a_node_that_does_not_hold_the_announced_key():
    """§10.2: secure_ready proves possession of the X25519 key; an impostor's does not verify."""
    real, impostor = NodeIdentity.generate(), NodeIdentity.generate()
    hello, pending = client_handshake(real.public_key)
    body = msgpack.unpackb(hello)
    body["node_key"] = impostor.public.x25519  # the impostor ignores who the hello was for
    ready, _ = node_accept(impostor, msgpack.packb(body))
    with pytest.raises(ChannelError, match="not signed by the node's identity|does not hold"):
        finish_handshake(pending, ready)
    with pytest.raises(ChannelError, match="another node key"):
        node_accept(impostor, hello)


@pytest.mark.parametrize(
    "change",
    [{"suite": "rot13"}, {"suite": []}, {"key": b"short"}, {"key": b"\x00" * 32}, {"type": "sealed"}, {"v": 2}],
)
def test_it_refuses_malformed_hellos(change):
    node = NodeIdentity.generate()
    hello, _ = client_handshake(node.public_key)
    body = {**msgpack.unpackb(hello), **change}
    with pytest.raises(ChannelError):
        node_accept(node, msgpack.packb(body))


def test_it_tells_hellos_from_ordinary_frames_cheaply():
    node = NodeIdentity.generate()
    hello, _ = client_handshake(node.public_key)
    assert is_handshake_frame(hello)
    assert not is_handshake_frame(b"secure_hello" + bytes(2000))
    assert not is_handshake_frame("secure_hello")


def test_it_derives_a_stable_self_certifying_key_id():
    """§9.1: the id is a function of both public keys only."""
    node = NodeIdentity.generate()
    assert key_id(node.public_key) == key_id(node.public) and len(key_id(node.public_key)) == 24
    assert key_id(node.public_key) != key_id(NodeIdentity.generate().public_key)
