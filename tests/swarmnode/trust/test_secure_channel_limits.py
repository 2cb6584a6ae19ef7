"""Sealed frames over the receiver's frame limit are refused before they are parsed or decrypted
(spec §6.3, §10.3); frames up to the limit still open, and the fixed overheads really are enough."""

import msgpack
import pytest

from swarmnode.protocol import relay as envelope
from swarmnode.protocol.framing import FRAME_SLACK, message_bound
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import (
    MAX_SEQ,
    SEAL_OVERHEAD,
    ChannelError,
    SecureChannel,
    client_handshake,
    finish_handshake,
    node_accept,
)

LIMIT = 10_000  # the node's --max-frame-bytes in these tests


def pair(limit: int = LIMIT) -> tuple[SecureChannel, SecureChannel]:
    node = NodeIdentity.generate()
    hello, pending = client_handshake(node.public_key)
    ready, node_side = node_accept(node, hello, max_plaintext=limit)
    return finish_handshake(pending, ready, max_plaintext=limit), node_side


class Spy:
    """Stands in for the node's AEAD: records whether anything was decrypted."""

    def __init__(self, aead) -> None:
        self.aead = aead
        self.calls = 0

    def decrypt(self, *args):
        self.calls += 1
        return self.aead.decrypt(*args)


def test_it_opens_a_frame_of_exactly_the_limit():
    client, node = pair()
    assert node.open(client.seal(b"x" * LIMIT)) == b"x" * LIMIT
    assert client.open(node.seal(b"y" * LIMIT)) == b"y" * LIMIT


def test_it_refuses_a_larger_sealed_frame_without_decrypting_it():
    """§6.3: a box one byte over what the limit allows fails unopened, and the channel is dead."""
    client, node = pair()
    node._recv = spy = Spy(node._recv)
    with pytest.raises(ChannelError) as info:
        node.open(client.seal(b"x" * (LIMIT + 1)))
    assert info.value.code == "frame_too_large"
    assert spy.calls == 0 and node.dead
    with pytest.raises(ChannelError, match="failed earlier"):
        node.open(client.seal(b"x"))


def test_it_refuses_a_huge_sealed_frame_before_parsing_it():
    """A frame over limit + seal overhead is refused on its length alone (nothing unpacked, nothing copied)."""
    _, node = pair()
    frame = msgpack.packb({"v": 1, "type": "sealed", "seq": 0, "box": bytes(LIMIT + SEAL_OVERHEAD)})
    with pytest.raises(ChannelError) as info:
        node.open(frame)
    assert info.value.code == "frame_too_large" and node.dead


def test_it_refuses_sealed_frames_that_expand_when_unpacked():
    """§6.2: the sealed envelope is unpacked within the same limits as any frame."""
    _, node = pair(limit=1 << 20)
    with pytest.raises(ChannelError) as info:
        node.open(b"\xdd" + (500_000).to_bytes(4, "big") + b"\x80" * 500_000)
    assert info.value.code == "bad_seal"


def test_the_fixed_overheads_cover_the_largest_seal_and_relay_envelope():
    """SEAL_OVERHEAD covers a seal with the largest sequence number; FRAME_SLACK covers that seal inside a
    relay_data envelope with the largest connection number (what a node's websocket must still read)."""
    client, node = pair()
    client.send_seq = MAX_SEQ - 1
    sealed = client.seal(b"x" * LIMIT)
    assert len(sealed) - LIMIT <= SEAL_OVERHEAD
    assert len(envelope.pack_data(2**62 - 1, sealed)) <= message_bound(LIMIT) == LIMIT + FRAME_SLACK
