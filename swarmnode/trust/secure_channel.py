"""End-to-end encrypted channel between a client and a node (spec §10), so a relay forwards ciphertext.

Both sides make an ephemeral X25519 key per connection. The keys come from two agreements: the
client's ephemeral key with the node's ephemeral key (forward secrecy: once both ephemeral secrets
are dropped, not even the node's long-term keys, leaked later, re-derive them) and with the node's
announced static X25519 key (§1.4: only the holder of that key gets the session keys). The node
signs both ephemeral keys with its Ed25519 identity, so a man in the middle that substitutes either
is refused. HKDF-SHA256 derives two direction keys over a transcript that binds all the public keys
and the cipher suite. Every frame after the handshake is sealed with an AEAD under a
per-direction sequence number used as the nonce: a frame that was altered, replayed, dropped or
reordered fails to open, and the channel is dead from then on (the peer closes the connection).

Two suites, same construction, differing only in the AEAD:

* ``x25519-chacha20poly1305`` (default for Python peers);
* ``x25519-aes256gcm`` (what a browser can do with WebCrypto alone, which has no ChaCha20).

Used by both ``server`` and ``client``; imports nothing from either. Sans-I/O: bytes in, bytes out.
"""

from __future__ import annotations

import base64
import hashlib
import os

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from swarmnode.protocol import Limits, ProtocolError
from swarmnode.protocol.framing import unpack
from swarmnode.trust.identity import NodeIdentity, PublicKeys, parse_public_key, verify_signature

__all__ = [
    "SUITES",
    "DEFAULT_SUITE",
    "ChannelError",
    "SecureChannel",
    "client_handshake",
    "node_accept",
    "finish_handshake",
    "key_id",
    "is_handshake_frame",
]

SUITES = {"x25519-chacha20poly1305": ChaCha20Poly1305, "x25519-aes256gcm": AESGCM}
DEFAULT_SUITE = "x25519-chacha20poly1305"
HKDF_INFO = b"layerswarm secure channel v2"  # v2: the node's ephemeral key joined the key agreement
READY_TEXT = b"layerswarm secure ready"
SIGN_CONTEXT = b"layerswarm secure ready v2"  # what the node's Ed25519 signature over the ephemeral keys starts with
MAX_HELLO_BYTES = 1024  # a secure_hello is ~150 bytes; bigger frames are never checked for one
MAX_SEQ = 2**62
TAG_BYTES = 16  # both suites append a 16-byte tag to the ciphertext
#: What sealing adds to a frame: the tag and the ``sealed`` map around the box (59 bytes with the
#: largest ``seq``), rounded up. A sealed frame over the plaintext limit plus this is refused unopened.
SEAL_OVERHEAD = 64


class ChannelError(Exception):
    """A sealed frame did not open (tampered, replayed, reordered) or a handshake frame is malformed.

    Attributes:
        code: ``bad_seal`` (frame failed to open), ``frame_too_large`` (refused unopened) or ``bad_handshake``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def key_id(public_key: str | PublicKeys) -> str:
    """A node's self-certifying id at a relay (spec §9.2): 24 base64url chars of SHA-256 of its public keys."""
    keys = public_key if isinstance(public_key, PublicKeys) else parse_public_key(public_key)
    digest = hashlib.sha256(b"layerswarm node id v1" + keys.ed25519 + keys.x25519).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode("ascii")


def _nonce(seq: int) -> bytes:
    return b"\x00\x00\x00\x00" + seq.to_bytes(8, "big")


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _transcript(suite: str, client_eph: bytes, node_eph: bytes, node: PublicKeys) -> bytes:
    return suite.encode() + b"\x00" + client_eph + node_eph + node.x25519 + node.ed25519


def _signed_text(suite: str, client_eph: bytes, node_eph: bytes, node: PublicKeys) -> bytes:
    return SIGN_CONTEXT + b"\x00" + _transcript(suite, client_eph, node_eph, node)


def _derive(
    ephemeral: bytes, static: bytes, suite: str, client_eph: bytes, node_eph: bytes, node: PublicKeys
) -> tuple[bytes, bytes]:
    # Both secrets feed the KDF: the ephemeral one for forward secrecy, the static one so that the
    # keys still belong only to the holder of the announced X25519 key.
    info = HKDF_INFO + b"\x00" + _transcript(suite, client_eph, node_eph, node)
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=info).derive(ephemeral + static)
    return okm[:32], okm[32:]  # client -> node, node -> client


class SecureChannel:
    """One side of an established channel: :meth:`seal` outgoing frames, :meth:`open` incoming ones.

    Args:
        suite: one of :data:`SUITES`.
        send_key, recv_key: 32-byte direction keys.
        send_seq, recv_seq: the next sequence numbers (both sides start the node->client direction at 1,
            since the handshake's ``secure_ready`` used 0).
        max_plaintext: the largest frame :meth:`open` returns (the receiver's frame limit, §6);
            bigger sealed frames are refused before they are parsed or decrypted.
    """

    def __init__(
        self,
        suite: str,
        send_key: bytes,
        recv_key: bytes,
        send_seq: int = 0,
        recv_seq: int = 0,
        max_plaintext: int = Limits().max_frame_bytes,
    ) -> None:
        self.suite = suite
        self._send = SUITES[suite](send_key)
        self._recv = SUITES[suite](recv_key)
        self.send_seq = send_seq
        self.recv_seq = recv_seq
        self.max_plaintext = max_plaintext
        self.dead = False

    def seal(self, plaintext: bytes) -> bytes:
        """One ``sealed`` frame carrying ``plaintext`` (spec §10.3)."""
        seq = self.send_seq
        if seq >= MAX_SEQ:
            raise ChannelError("bad_seal", "sequence numbers exhausted: open a new connection")
        self.send_seq += 1
        box = self._send.encrypt(_nonce(seq), plaintext, None)
        return msgpack.packb({"v": 1, "type": "sealed", "seq": seq, "box": box}, use_bin_type=True)

    def open(self, frame: bytes | str) -> bytes:
        """The plaintext of a ``sealed`` frame.

        Raises:
            ChannelError: ``bad_seal`` for anything but the next frame, intact, or ``frame_too_large``
                for a frame over :attr:`max_plaintext` sealed (§6.3); the channel is then dead.
        """
        if self.dead:
            raise ChannelError("bad_seal", "the channel failed earlier")
        try:
            if len(frame) > self.max_plaintext + SEAL_OVERHEAD:
                raise ChannelError(
                    "frame_too_large", f"sealed frame of {len(frame)} bytes: frames are at most {self.max_plaintext}"
                )
            seq, box = _parse_sealed(frame, self.max_plaintext + SEAL_OVERHEAD)
            if len(box) > self.max_plaintext + TAG_BYTES:
                raise ChannelError(
                    "frame_too_large", f"sealed box of {len(box)} bytes: frames are at most {self.max_plaintext}"
                )
            if seq != self.recv_seq:
                what = "replayed" if seq < self.recv_seq else "out of order (frames missing)"
                raise ChannelError("bad_seal", f"frame {seq} {what}; expected {self.recv_seq}")
            try:
                plaintext = self._recv.decrypt(_nonce(seq), box, None)
            except InvalidTag:
                raise ChannelError("bad_seal", f"frame {seq} was altered in transit (authentication failed)") from None
        except ChannelError:
            self.dead = True
            raise
        self.recv_seq += 1
        return plaintext


def _unpack_map(frame: bytes | str, what: str, max_bin_bytes: int = MAX_HELLO_BYTES) -> dict:
    if isinstance(frame, str):
        raise ChannelError("bad_seal", f"{what} must be binary")
    try:
        body = unpack(frame, max_bin_bytes)  # bounded while it unpacks (§6.2)
    except ProtocolError as exc:
        raise ChannelError("bad_seal", f"{what} is not msgpack: {exc.message}") from None
    if not isinstance(body, dict) or body.get("v") != 1:
        raise ChannelError("bad_seal", f"{what} is not a version 1 map")
    return body


def _parse_sealed(frame: bytes | str, max_box_bytes: int) -> tuple[int, bytes]:
    body = _unpack_map(frame, "a sealed frame", max_box_bytes)
    seq, box = body.get("seq"), body.get("box")
    if body.get("type") == "error":  # the peer gave up on the channel and says why, in the clear
        raise ChannelError(str(body.get("code", "bad_seal"))[:64], str(body.get("message", ""))[:500])
    if body.get("type") != "sealed" or not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(box, bytes):
        raise ChannelError("bad_seal", "expected a sealed frame {seq, box}")
    return seq, box


def client_handshake(public_key: str, suite: str = DEFAULT_SUITE, request_id: int = 0) -> tuple[bytes, object]:
    """Start a channel to the node that announced ``public_key``.

    Returns:
        The ``secure_hello`` frame to send, and a pending state for :func:`finish_handshake`
        (it holds the ephemeral secret: drop it with the channel).

    Raises:
        ValueError: malformed public key or unknown suite.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; one of {sorted(SUITES)}")
    node = parse_public_key(public_key)
    eph = X25519PrivateKey.generate()
    eph_pub = _raw(eph.public_key())
    hello = {"v": 1, "type": "secure_hello", "id": request_id, "suite": suite, "key": eph_pub, "node_key": node.x25519}
    return msgpack.packb(hello, use_bin_type=True), (suite, node, eph, eph_pub)


def finish_handshake(
    pending: object, frame: bytes | str, max_plaintext: int = Limits().max_frame_bytes
) -> SecureChannel:
    """Check the node's ``secure_ready`` (its ephemeral key signed by its identity, and proof that it
    holds the announced X25519 key); return the channel (which opens frames of up to
    ``max_plaintext`` bytes, see :class:`SecureChannel`).

    Raises:
        ChannelError: an error reply, or a ready frame that does not authenticate.
    """
    suite, node, eph, eph_pub = pending  # type: ignore[misc]
    body = _unpack_map(frame, "the secure_ready reply")
    if body.get("type") == "error":
        raise ChannelError(str(body.get("code", "bad_handshake"))[:64], str(body.get("message", ""))[:500])
    confirm, node_eph, sig = body.get("confirm"), body.get("key"), body.get("sig")
    if body.get("type") != "secure_ready" or not isinstance(confirm, bytes):
        raise ChannelError("bad_handshake", "expected secure_ready")
    if body.get("suite", suite) != suite:
        raise ChannelError("bad_handshake", "secure_ready names another suite")
    if not isinstance(node_eph, bytes) or len(node_eph) != 32 or not isinstance(sig, bytes):
        raise ChannelError("bad_handshake", "secure_ready lacks the node's ephemeral key (a node without §10.2 v2?)")
    if not verify_signature(node, sig, _signed_text(suite, eph_pub, node_eph, node)):
        raise ChannelError(
            "bad_handshake", "the ephemeral keys are not signed by the node's identity (man in the middle?)"
        )
    try:
        ephemeral = eph.exchange(X25519PublicKey.from_public_bytes(node_eph))
        static = eph.exchange(X25519PublicKey.from_public_bytes(node.x25519))
    except ValueError:
        raise ChannelError("bad_handshake", "the node's ephemeral key is invalid") from None
    c2n, n2c = _derive(ephemeral, static, suite, eph_pub, node_eph, node)
    try:
        text = SUITES[suite](n2c).decrypt(_nonce(0), confirm, None)
    except InvalidTag:
        raise ChannelError("bad_handshake", "the node does not hold the announced key") from None
    if text != READY_TEXT:
        raise ChannelError("bad_handshake", "unexpected confirmation")
    return SecureChannel(suite, send_key=c2n, recv_key=n2c, send_seq=0, recv_seq=1, max_plaintext=max_plaintext)


def is_handshake_frame(frame: bytes | str) -> bool:
    """Cheap test whether a frame may be a ``secure_hello`` (small, binary, the type string inside)."""
    return isinstance(frame, bytes) and len(frame) <= MAX_HELLO_BYTES and b"secure_hello" in frame


def node_accept(
    identity: NodeIdentity, frame: bytes, max_plaintext: int = Limits().max_frame_bytes
) -> tuple[bytes, SecureChannel]:
    """The node's side of the handshake: parse ``secure_hello``, derive keys; the channel opens
    frames of up to ``max_plaintext`` bytes (the node's frame limit, see :class:`SecureChannel`).

    Returns:
        The ``secure_ready`` frame to send back and the node's channel.

    Raises:
        ChannelError: ``bad_handshake`` (unknown suite, malformed or low-order key, or a hello
            addressed to another X25519 key, e.g. the node's previous identity).
    """
    body = _unpack_map(frame, "secure_hello")
    suite, eph_pub, node_key = body.get("suite"), body.get("key"), body.get("node_key")
    if body.get("type") != "secure_hello":
        raise ChannelError("bad_handshake", "expected secure_hello")
    if not isinstance(suite, str) or suite not in SUITES:  # a list or map is unhashable (found by fuzzing)
        raise ChannelError("bad_handshake", f"unsupported suite {str(suite)[:64]!r}; one of {sorted(SUITES)}")
    if not isinstance(eph_pub, bytes) or len(eph_pub) != 32:
        raise ChannelError("bad_handshake", "key must be 32 raw bytes")
    if node_key is not None and node_key != identity.public.x25519:
        raise ChannelError("bad_handshake", "secure_hello addressed to another node key (stale announcement?)")
    node_eph = X25519PrivateKey.generate()  # this connection's only: forgotten with the channel
    node_eph_pub = _raw(node_eph.public_key())
    try:
        static = identity.shared_secret(eph_pub)
        ephemeral = node_eph.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError:
        raise ChannelError("bad_handshake", "the ephemeral key is invalid") from None
    c2n, n2c = _derive(ephemeral, static, suite, eph_pub, node_eph_pub, identity.public)
    confirm = SUITES[suite](n2c).encrypt(_nonce(0), READY_TEXT, None)
    sig = identity.sign(_signed_text(suite, eph_pub, node_eph_pub, identity.public))
    request_id = body.get("id", 0)
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        request_id = 0
    reply = {
        "v": 1,
        "type": "secure_ready",
        "id": request_id,
        "suite": suite,
        "key": node_eph_pub,
        "sig": sig,
        "confirm": confirm,
    }
    channel = SecureChannel(suite, send_key=n2c, recv_key=c2n, send_seq=1, recv_seq=0, max_plaintext=max_plaintext)
    return msgpack.packb(reply, use_bin_type=True), channel


def random_bytes(n: int) -> bytes:
    """``n`` random bytes from the OS (challenges, nonces)."""
    return os.urandom(n)
