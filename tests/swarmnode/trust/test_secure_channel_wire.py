"""Forward secrecy and the signed ephemeral key against a real node process (spec §10.2, #17 finding 17a).

Someone on the path (a relay, a proxy) records a client's encrypted session with a real node, and later
steals the node's identity file: the recording stays closed. With only the node's stolen X25519 key, the
same someone swaps in its own ephemeral key to read live traffic: the client refuses the handshake.
"""

from __future__ import annotations

import itertools
import threading

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from websockets.sync.client import connect
from websockets.sync.server import serve

from swarmnode.client.remote import RemoteError, RemoteSpan
from swarmnode.launcher import start_node
from swarmnode.trust import secure_channel as sc
from swarmnode.trust.identity import NodeIdentity

pytestmark = pytest.mark.slow


class PathProxy:
    """A websocket hop between client and node that records every frame and may rewrite the node's
    ``secure_ready`` (``rewrite_ready(frame, client_ephemeral_key)``)."""

    def __init__(self, upstream: str, rewrite_ready=None) -> None:
        self.upstream, self.rewrite_ready = upstream, rewrite_ready
        self.frames: list[tuple[str, bytes]] = []  # ("up" | "down", frame)
        self.server = serve(self.handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/layerswarm/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, client) -> None:
        with connect(self.upstream) as node:

            def down() -> None:
                for frame in node:
                    if self.rewrite_ready and b"secure_ready" in frame:
                        hello = next(f for d, f in reversed(self.frames) if d == "up" and b"secure_hello" in f)
                        frame = self.rewrite_ready(frame, msgpack.unpackb(hello)["key"])
                    self.frames.append(("down", frame))
                    client.send(frame)

            threading.Thread(target=down, daemon=True).start()
            for frame in client:
                self.frames.append(("up", frame))
                node.send(frame)


@pytest.fixture(scope="module")
def keyed_node(tiny_models, tmp_path_factory):
    """A real node whose identity file the attacker will steal later."""
    root = tmp_path_factory.mktemp("keyed-node")
    key_file = root / "node.key"
    node = start_node(
        str(tiny_models["llama"]), "0:6", extra_args=["--backend", "torch", "--identity", str(key_file)],
        log_path=root / "node.log",
    )  # fmt: skip
    yield node, key_file
    node.process.kill()
    node.process.wait()


def test_a_recorded_session_stays_closed_after_the_node_identity_is_stolen(keyed_node):
    node, key_file = keyed_node
    stolen = NodeIdentity.load_or_create(key_file)
    proxy = PathProxy(node.url)
    span = RemoteSpan(proxy.url, timeout=30, public_key=stolen.public_key, secure=True)
    try:
        assert span.secure and span.info().end_block == 6
    finally:
        span.close()
        proxy.server.shutdown()

    hello = next(msgpack.unpackb(f) for d, f in proxy.frames if d == "up" and b"secure_hello" in f)
    ready = next(msgpack.unpackb(f) for d, f in proxy.frames if d == "down" and b"secure_ready" in f)
    sealed_up = [f for d, f in proxy.frames if d == "up" and msgpack.unpackb(f).get("type") == "sealed"]
    sealed_down = [f for d, f in proxy.frames if d == "down" and msgpack.unpackb(f).get("type") == "sealed"]
    assert sealed_up and sealed_down
    assert b"info" not in b"".join(sealed_up)  # the request is not in the clear

    # Everything the stolen keys and the recording yield: each private key with each public key seen.
    publics = [hello["key"], ready["key"], stolen.public.x25519]
    secrets = [stolen._agreement.exchange(X25519PublicKey.from_public_bytes(p)) for p in publics]
    for a, b in itertools.product(secrets, repeat=2):
        for ikm in (a, a + b):
            c2n, n2c = sc._derive(ikm, b"", ready["suite"], hello["key"], ready["key"], stolen.public)
            for key, frame, seq in ((c2n, sealed_up[0], 0), (n2c, sealed_down[0], 1)):
                channel = sc.SecureChannel(ready["suite"], send_key=key, recv_key=key, recv_seq=seq)
                with pytest.raises(sc.ChannelError, match="altered"):
                    channel.open(frame)


def test_a_man_in_the_middle_with_the_stolen_x25519_key_is_refused(keyed_node):
    """It can answer the static half of the agreement, but cannot sign its own ephemeral key as the node."""
    node, key_file = keyed_node
    stolen = NodeIdentity.load_or_create(key_file)

    def swap_ephemeral(frame: bytes, client_eph: bytes) -> bytes:
        body = msgpack.unpackb(frame)
        mine = X25519PrivateKey.generate()
        mine_pub = sc._raw(mine.public_key())
        c2n, n2c = sc._derive(
            mine.exchange(X25519PublicKey.from_public_bytes(client_eph)),
            stolen._agreement.exchange(X25519PublicKey.from_public_bytes(client_eph)),
            body["suite"], client_eph, mine_pub, stolen.public,
        )  # fmt: skip
        confirm = sc.SUITES[body["suite"]](n2c).encrypt(sc._nonce(0), sc.READY_TEXT, None)
        return msgpack.packb({**body, "key": mine_pub, "confirm": confirm})

    proxy = PathProxy(node.url, rewrite_ready=swap_ephemeral)
    try:
        with pytest.raises(RemoteError) as exc:
            RemoteSpan(proxy.url, timeout=30, public_key=stolen.public_key, secure=True)
        assert exc.value.code == "bad_handshake" and "not signed" in exc.value.message
    finally:
        proxy.server.shutdown()
