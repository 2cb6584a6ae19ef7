"""Push links between real nodes (spec §7.5, §7.6): sealed on the wire, only to nodes of the swarm.

Node A learns node B through ``--peers``, under the address of a tapping proxy that stands in for a
relay or anyone on the path between two nodes: it forwards every byte and keeps a copy.
"""

import socket
import threading
import time

import numpy as np
import pytest
from websockets.sync.client import connect

from swarmnode.launcher import start_node
from swarmnode.protocol import Error, OpenSession, SessionOpened, Step, StepResult, decode, encode, tensor_from_numpy
from swarmnode.trust.identity import NodeIdentity

KEY = "p" * 32


class TapProxy:
    """A loopback TCP proxy that records what travels towards the target."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.upstream = bytearray()  # bytes sent towards the target, all connections together
        self.connections = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, node_url: str) -> str:
        return node_url.replace(f":{node_url.split(':')[2].split('/')[0]}/", f":{self.port}/")

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target_port))
            self.connections += 1
            self._sockets += [down, up]
            threading.Thread(target=self._pipe, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self.upstream += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop listening and cut every connection."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone would not)
        except OSError:
            pass
        self._listener.close()
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Peer:
    def __init__(self, url):
        self.ws = connect(url, compression=None, max_size=None)

    def ask(self, msg):
        self.ws.send(encode(msg))
        return self.recv()

    def recv(self, timeout=60.0):
        return decode(self.ws.recv(timeout=timeout))

    def close(self):
        self.ws.close()


@pytest.fixture(scope="module")
def tapped(tiny_node, tiny_models, tmp_path_factory):
    """``(node A, the proxy's URL for node B, the proxy)``: A knows B (tiny_node) only through the proxy."""
    proxy = TapProxy(int(tiny_node.url.split(":")[2].split("/")[0]))
    b_url = proxy.url_for(tiny_node.url)
    node_a = start_node(
        str(tiny_models["llama"]),
        "0:6",
        extra_args=["--backend", "torch", "--no-measure", "--peers", b_url, "--relay", "never"],
        log_path=tmp_path_factory.mktemp("push-links") / "a.log",
    )
    yield node_a, b_url, proxy
    node_a.process.kill()
    node_a.process.wait()
    proxy.close()


def _x(seed):
    return tensor_from_numpy(np.random.default_rng(seed).standard_normal((1, 3, 64)).astype(np.float32))


def _direct(url, sid, x):
    peer = Peer(url)
    assert isinstance(peer.ask(OpenSession(id=1, session_id=sid, max_length=16)), SessionOpened)
    out = peer.ask(Step(id=2, session_id=sid, position=0, hidden=x))
    peer.close()
    assert isinstance(out, StepResult)
    return out.hidden


def test_a_push_hop_carries_no_plaintext_hidden_states(tapped, tiny_node):
    """Whoever sits between two nodes (a relay, the network) sees only sealed frames of a push hop,
    and the pushed step still returns exactly what the two nodes compute hop by hop."""
    node_a, b_url, proxy = tapped
    x = _x(7)
    a_out = _direct(node_a.url, "enc-ref-a", x)  # what A sends B: its span's output for x
    expected = _direct(tiny_node.url, "enc-ref-b", a_out).to_numpy()
    to_a, to_b = Peer(node_a.url), Peer(tiny_node.url)
    for peer in (to_a, to_b):
        assert isinstance(peer.ask(OpenSession(id=1, session_id="enc", max_length=16, push_key=KEY)), SessionOpened)
    before = len(proxy.upstream)
    to_a.ws.send(encode(Step(id=9, session_id="enc", position=0, hidden=x, push_key=KEY, route=(b_url,))))
    reply = to_b.recv()
    assert isinstance(reply, StepResult) and reply.id == 9, reply
    np.testing.assert_array_equal(reply.hidden.to_numpy(), expected)
    wire = bytes(proxy.upstream[before:])
    secret = a_out.data
    assert len(wire) > len(secret)  # the hop did travel through the tap
    chunks = [secret[i : i + 32] for i in range(0, len(secret) - 32, 32)]
    assert not any(chunk in wire for chunk in chunks), "plaintext hidden states on the wire"
    assert b"push_key" not in wire and KEY.encode() not in wire  # nor the session's push key
    to_a.close()
    to_b.close()


def test_a_node_of_the_swarm_that_cannot_be_reached_is_reported_as_push_failed(tapped):
    """§7.3: a registered next hop that does not answer is ``push_failed`` (its URL), told to the owner."""
    node_a, b_url, proxy = tapped
    owner = Peer(node_a.url)
    assert isinstance(owner.ask(OpenSession(id=1, session_id="gone", max_length=16, push_key=KEY)), SessionOpened)
    proxy.close()  # B's address stops answering, and A's open link to it is cut
    time.sleep(0.5)  # A notices the cut link (had it not, sending on it fails the same way)
    owner.ws.send(encode(Step(id=20, session_id="gone", position=0, hidden=_x(1), push_key=KEY, route=(b_url,))))
    reply = owner.recv()
    assert isinstance(reply, Error) and reply.code == "push_failed" and reply.message == b_url
    owner.close()


def test_naming_a_key_does_not_make_a_node_with_a_swarm_view_dial_a_stranger(tapped):
    """The attack of tests/swarmnode/server/test_push_routes.py, with the stranger also naming a key in the
    route (``URL#key``, as clients do): a node that knows its swarm (here through ``--peers``) still
    dials only nodes of that swarm; the stranger's socket sees no connection."""
    node_a, _, _ = tapped
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    target = f"ws://127.0.0.1:{listener.getsockname()[1]}/layerswarm/v1"
    forged = f"{target}#{NodeIdentity.generate().public_key}"
    owner = Peer(node_a.url)
    try:
        assert isinstance(
            owner.ask(OpenSession(id=1, session_id="ssrf-key", max_length=16, push_key=KEY)), SessionOpened
        )
        owner.ws.send(
            encode(Step(id=3, session_id="ssrf-key", position=0, hidden=_x(2), push_key=KEY, route=(forged,)))
        )
        reply = owner.recv()
        assert isinstance(reply, Error) and reply.code == "push_refused" and reply.message.startswith(target)
        listener.settimeout(1.0)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        owner.close()
        listener.close()
