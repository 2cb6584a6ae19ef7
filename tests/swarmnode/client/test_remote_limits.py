"""A malicious node cannot make the client hold an oversized reply (spec §6.4).

The "node" is a raw socket server that completes the websocket handshake and answers any request
with a frame whose header announces far more than a reply may be, then streams zeros. The client
must fail the request with a :class:`RemoteError` having read no more than a few socket buffers.
"""

import base64
import hashlib
import socket
import threading
import tracemalloc

import pytest

from swarmnode.client.remote import RemoteError, RemoteSpan
from swarmnode.protocol import Info, Limits
from swarmnode.protocol.framing import message_bound

MIB = 1 << 20
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class OversizedNode:
    """Answers the first request with a binary frame of ``announced`` bytes (sent as long as the client reads)."""

    def __init__(self, announced: int, sent: int) -> None:
        self.announced, self.sent = announced, sent
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/layerswarm/v1"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            conn.recv(65536)  # the request (its content does not matter)
            chunk = bytes(MIB)
            try:
                conn.sendall(b"\x82\x7f" + self.announced.to_bytes(8, "big"))  # FIN, binary, 64-bit length
                for _ in range(self.sent // MIB):
                    conn.sendall(chunk)
            except OSError:
                pass  # the client hung up on the frame: what it should do

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=10)


@pytest.mark.parametrize(
    "announced, sent",
    [(1 << 30, 96 * MIB), (message_bound(Limits().max_frame_bytes) + 1, 96 * MIB)],
    ids=["1GiB", "one-byte-over"],
)
def test_it_refuses_an_oversized_reply_without_reading_it(announced, sent):
    node = OversizedNode(announced, sent)
    try:
        span = RemoteSpan(node.url, timeout=10)
        try:
            tracemalloc.start()
            try:
                with pytest.raises(RemoteError) as info:
                    span.request(Info())
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        finally:
            span.close()
    finally:
        node.close()
    assert info.value.code == "bad_reply"
    assert "exceeds" in info.value.message  # the size, not a broken connection or a timeout
    assert peak < 8 * MIB  # a few 1 MiB socket reads at most, not the 96 MiB the node sent
