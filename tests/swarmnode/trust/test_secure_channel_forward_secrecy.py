"""Forward secrecy and the signed ephemeral keys of the channel handshake (spec §10.2; #17 finding 17a).

The attacker records a whole session off the wire (a relay sees every frame) and later steals the
node's long-term identity (both its Ed25519 and X25519 private keys), and the client's, if the client
is itself a node. Every secret those keys and the recording yield must fail to open the recorded
frames. An active attacker in the middle that swaps in its own ephemeral key is refused.
"""

from __future__ import annotations

import itertools

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from swarmnode.trust import secure_channel as sc
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import SUITES, ChannelError, client_handshake, finish_handshake, node_accept


def record_session(suite: str):
    """A full session as a relay records it; returns the frames, the identities and the client's pending state."""
    node, client_node = NodeIdentity.generate(), NodeIdentity.generate()
    hello, pending = client_handshake(node.public_key, suite)
    ready, node_side = node_accept(node, hello)
    client = finish_handshake(pending, ready)
    up = [client.seal(b"prompt hidden states %d" % i) for i in range(3)]
    assert [node_side.open(f) for f in up] == [b"prompt hidden states %d" % i for i in range(3)]
    down = [node_side.seal(b"next token %d" % i) for i in range(3)]
    assert [client.open(f) for f in down] == [b"next token %d" % i for i in range(3)]
    return {"hello": hello, "ready": ready, "up": up, "down": down}, node, client_node, pending


def opens_recording(recording, suite: str, ikm: bytes, node: NodeIdentity) -> bool:
    """Whether the session keys derived from ``ikm`` (and the recorded public transcript) open any frame."""
    hello, ready = msgpack.unpackb(recording["hello"]), msgpack.unpackb(recording["ready"])
    info = sc.HKDF_INFO + b"\x00" + sc._transcript(suite, hello["key"], ready["key"], node.public)
    candidates = [sc.HKDF(algorithm=sc.hashes.SHA256(), length=64, salt=None, info=info).derive(ikm)]
    # and the pre-v2 derivation, where the static agreement alone made the keys
    old_info = b"layerswarm secure channel v1\x00" + suite.encode() + b"\x00" + hello["key"]
    old_info += node.public.x25519 + node.public.ed25519
    candidates.append(sc.HKDF(algorithm=sc.hashes.SHA256(), length=64, salt=None, info=old_info).derive(ikm))
    for okm in candidates:
        c2n, n2c = okm[:32], okm[32:]
        for key, frames, start in ((c2n, recording["up"], 0), (n2c, recording["down"], 1)):
            channel = sc.SecureChannel(suite, send_key=key, recv_key=key, recv_seq=start)
            try:
                channel.open(frames[0])
                return True
            except ChannelError:
                pass
    return False


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_it_keeps_recorded_traffic_secret_after_the_long_term_keys_leak(suite):
    recording, node, client_node, pending = record_session(suite)
    hello, ready = msgpack.unpackb(recording["hello"]), msgpack.unpackb(recording["ready"])
    publics = [hello["key"], ready["key"], node.public.x25519, client_node.public.x25519]
    # Every X25519 agreement the attacker can compute: a leaked private key with every public key seen.
    leaked = [node._agreement, client_node._agreement]
    secrets = [priv.exchange(X25519PublicKey.from_public_bytes(pub)) for priv in leaked for pub in publics]
    tried = 0
    for a, b in itertools.product(secrets, repeat=2):
        for ikm in (a, a + b):
            tried += 1
            assert not opens_recording(recording, suite, ikm, node), "recorded traffic decrypted from long-term keys"
    assert tried == 2 * len(secrets) ** 2

    # Control: the same attacker code does open the recording once it also has the client's ephemeral
    # secret, so what protects the recording is exactly that secret, which dies with the connection.
    _, _, client_eph, _ = pending
    ephemeral = client_eph.exchange(X25519PublicKey.from_public_bytes(ready["key"]))
    static = node.shared_secret(hello["key"])
    assert opens_recording(recording, suite, ephemeral + static, node)


def test_each_connection_gets_fresh_ephemeral_keys_from_the_node():
    node = NodeIdentity.generate()
    keys = set()
    for _ in range(3):
        hello, _ = client_handshake(node.public_key)
        ready, _ = node_accept(node, hello)
        keys.add(msgpack.unpackb(ready)["key"])
    assert len(keys) == 3


def test_a_man_in_the_middle_that_swaps_the_node_ephemeral_key_is_refused():
    """Even holding the node's leaked X25519 key (so it can make a valid ``confirm``), the attacker
    cannot sign its own ephemeral key with the node's Ed25519 identity."""
    node = NodeIdentity.generate()
    hello, pending = client_handshake(node.public_key)
    ready = msgpack.unpackb(node_accept(node, hello)[0])
    client_eph = msgpack.unpackb(hello)["key"]
    mitm = X25519PrivateKey.generate()
    mitm_pub = sc._raw(mitm.public_key())
    c2n, n2c = sc._derive(
        mitm.exchange(X25519PublicKey.from_public_bytes(client_eph)),
        node.shared_secret(client_eph),  # the leaked static key
        ready["suite"],
        client_eph,
        mitm_pub,
        node.public,
    )
    forged = {
        **ready,
        "key": mitm_pub,
        "confirm": SUITES[ready["suite"]](n2c).encrypt(sc._nonce(0), sc.READY_TEXT, None),
    }
    with pytest.raises(ChannelError, match="not signed by the node's identity") as exc:
        finish_handshake(pending, msgpack.packb(forged))
    assert exc.value.code == "bad_handshake"


def test_a_man_in_the_middle_that_swaps_the_client_ephemeral_key_is_refused():
    """The node signs the client's ephemeral key too: a relayed ready made for the attacker's hello fails."""
    node = NodeIdentity.generate()
    hello, pending = client_handshake(node.public_key)
    mitm_hello, _ = client_handshake(node.public_key)  # the attacker's own key, same node
    body = {**msgpack.unpackb(hello), "key": msgpack.unpackb(mitm_hello)["key"]}
    ready, _ = node_accept(node, msgpack.packb(body))
    with pytest.raises(ChannelError, match="not signed by the node's identity"):
        finish_handshake(pending, ready)


@pytest.mark.parametrize(
    "change",
    [{"key": None}, {"key": b"short"}, {"sig": None}, {"sig": b"\x00" * 64}, {"key": b"\x00" * 32}, {"suite": "x"}],
)
def test_it_refuses_a_ready_with_a_missing_or_bad_ephemeral_key(change):
    node = NodeIdentity.generate()
    hello, pending = client_handshake(node.public_key)
    ready = {**msgpack.unpackb(node_accept(node, hello)[0]), **change}
    with pytest.raises(ChannelError) as exc:
        finish_handshake(pending, msgpack.packb(ready))
    assert exc.value.code == "bad_handshake"
