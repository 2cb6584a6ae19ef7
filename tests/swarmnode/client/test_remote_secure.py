"""The client's end of the encrypted channel (spec §10.2): a node without ChaCha20 (a browser) gets AES-GCM."""

from __future__ import annotations

import threading

import msgpack
from websockets.sync.server import serve

from swarmnode.client.remote import RemoteSpan
from swarmnode.protocol import Error, InfoReply, decode, encode
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import node_accept


class AesOnlyNode:
    """A stand-in for a browser node: WebCrypto has AES-GCM but no ChaCha20."""

    def __init__(self) -> None:
        self.identity = NodeIdentity.generate()
        self.suites: list[str] = []
        self.server = serve(self.handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/layerswarm/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, ws) -> None:
        channel = None
        for frame in ws:
            if channel is None:
                suite = msgpack.unpackb(frame).get("suite")
                self.suites.append(suite)
                if suite != "x25519-aes256gcm":
                    ws.send(encode(Error(code="bad_handshake", message=f"unsupported suite {suite!r}")))
                    continue
                reply, channel = node_accept(self.identity, frame)
                ws.send(reply)
                continue
            request = decode(channel.open(frame))
            ws.send(channel.seal(encode(InfoReply(id=request.id, model="m", public_key=self.identity.public_key))))


def test_it_falls_back_to_aes_gcm_when_the_node_lacks_chacha20():
    node = AesOnlyNode()
    try:
        span = RemoteSpan(node.url, timeout=10, public_key=node.identity.public_key, secure=True)
        try:
            assert span.secure and span._channel.suite == "x25519-aes256gcm"
            assert span.info().model == "m"
        finally:
            span.close()
        assert node.suites == ["x25519-chacha20poly1305", "x25519-aes256gcm"]
    finally:
        node.server.shutdown()
