"""Relays (spec §9) with real processes: a tiny node behind a relay, clients through it, end-to-end encryption (§10)."""

from __future__ import annotations

import asyncio
import threading

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from swarmnode.client.remote import RemoteError, RemoteSpan
from swarmnode.launcher import start_node, start_relay
from swarmnode.protocol import CloseSession, OpenSession, Step, StepResult, tensor_from_numpy
from swarmnode.protocol import relay as envelope
from swarmnode.server.relay_hub import RelayHub, serve_relay
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import key_id

pytestmark = pytest.mark.slow


def hidden(tokens=3, seed=0):
    return tensor_from_numpy(np.random.default_rng(seed).standard_normal((1, tokens, 64)).astype(np.float32))


class RecordingHub(RelayHub):
    """A relay that keeps what clients send and, when told to, flips one bit of the next client frame."""

    seen: list[bytes] = []
    tamper_next = False

    async def to_node(self, attached, conn, frame):
        type(self).seen.append(frame)
        if type(self).tamper_next and len(frame) > 200:
            type(self).tamper_next = False
            frame = frame[:-40] + bytes([frame[-40] ^ 0x01]) + frame[-39:]
        await super().to_node(attached, conn, frame)


class InProcessRelay:
    """A relay in a thread of the test process, so the test can look inside it and make it misbehave."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.ready: asyncio.Future | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = threading.Event()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.ready = self.loop.create_future()
        self.task = self.loop.create_task(serve_relay("127.0.0.1", 0, ready=self.ready, hub_class=RecordingHub))
        self.ready.add_done_callback(lambda _: self.started.set())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass

    def start(self) -> InProcessRelay:
        self.thread.start()
        assert self.started.wait(10)
        self.hub = self.ready.result()
        self.url = self.hub.base_url
        return self

    def stop(self):
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)


@pytest.fixture(scope="module")
def relayed(tiny_models, tmp_path_factory):
    """A relay process, an in-process recording relay, and one tiny node attached to each."""
    logs = tmp_path_factory.mktemp("relay-logs")
    started = []  # killed even when a later start fails
    recording = InProcessRelay().start()
    try:
        relay = start_relay(log_path=logs / "relay.log")
        started.append(relay)
        common = ["--backend", "torch", "--no-measure", "--relay", "always"]
        model = str(tiny_models["llama"])
        node = start_node(model, "0:6", extra_args=[*common, "--relays", relay.url], log_path=logs / "node.log")
        started.append(node)
        spied = start_node(model, "0:6", extra_args=[*common, "--relays", recording.url], log_path=logs / "spied.log")
        started.append(spied)
        yield relay, node, recording, spied
    finally:
        for p in started:
            p.process.kill()
            p.process.wait()
        recording.stop()


def run_steps(span: RemoteSpan, sid: str, count: int = 2) -> list[np.ndarray]:
    span.request(OpenSession(session_id=sid, max_length=32))
    outs, position = [], 0
    for i in range(count):
        reply = span.request(Step(session_id=sid, position=position, hidden=hidden(3, seed=i)))
        assert isinstance(reply, StepResult)
        outs.append(reply.hidden.to_numpy())
        position += 3
    span.request(CloseSession(session_id=sid))
    return outs


def test_it_serves_a_relayed_node_exactly_like_a_direct_one_encrypted(relayed):
    """§9.4, §10: same replies through the relay as directly; the relayed link is end-to-end encrypted."""
    relay, node, _, _ = relayed
    address = node.address
    assert address.startswith(relay.url + "/") and address != node.url
    through = RemoteSpan(address, timeout=30)
    direct = RemoteSpan(node.url, timeout=30)
    try:
        assert through.secure and not direct.secure
        info = through.info()
        assert info.relay and key_id(info.public_key) == address.rsplit("/", 1)[1]
        for a, b in zip(run_steps(through, "via-relay"), run_steps(direct, "direct"), strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        through.close()
        direct.close()


def test_it_encrypts_direct_links_on_request(relayed):
    """§10: direct links get the same option."""
    _, node, _, _ = relayed
    span = RemoteSpan(node.url, timeout=30, secure=True)
    try:
        assert span.secure and len(run_steps(span, "direct-secure", 1)) == 1
    finally:
        span.close()


def test_it_answers_frames_for_an_unknown_target_with_an_error(relayed):
    """§9.4: no node with that key id is attached: every frame gets unknown_target."""
    relay, _, _, _ = relayed
    stranger = key_id(NodeIdentity.generate().public_key)
    with pytest.raises(RemoteError) as err:
        RemoteSpan(f"{relay.url}/{stranger}", timeout=10)
    assert err.value.code == "unknown_target"


def _attach(url: str, identity: NodeIdentity, claimed_key: str | None = None):
    ws = connect(url, max_size=None)
    claimed = claimed_key or identity.public_key
    ws.send(envelope.pack("relay_hello", id=1, public_key=claimed))
    challenge = envelope.unpack(ws.recv(timeout=10), 1 << 16)
    assert challenge["type"] == "relay_challenge"
    proof = identity.sign(envelope.proof_message(challenge["nonce"], challenge["relay"], claimed))
    ws.send(envelope.pack("relay_proof", id=1, signature=proof))
    return ws, envelope.unpack(ws.recv(timeout=10), 1 << 16)


def test_it_refuses_a_node_claiming_another_nodes_key(relayed):
    """§9.2: attaching as a key id needs that key's signature: an impostor gets bad_proof; the victim stays."""
    relay, node, _, _ = relayed
    victim_key = RemoteSpan(node.url, timeout=10).info().public_key
    ws, reply = _attach(relay.url, NodeIdentity.generate(), claimed_key=victim_key)
    ws.close()
    assert reply["type"] == "error" and reply["code"] == "bad_proof"
    span = RemoteSpan(node.address, timeout=10)  # still the real node, encrypted to its key
    try:
        assert span.secure and span.info().public_key == victim_key
    finally:
        span.close()


def test_it_answers_a_node_writing_to_an_unknown_connection_with_an_error(relayed):
    """§9.4: relay_data for a connection the relay does not know is dropped with an error."""
    relay, _, _, _ = relayed
    ws, reply = _attach(relay.url, NodeIdentity.generate())
    try:
        assert reply["type"] == "relay_registered" and reply["reachable"] == "unchecked"
        ws.send(envelope.pack_data(987654, b"hello?"))
        error = envelope.unpack(ws.recv(timeout=10), 1 << 16)
        assert error["type"] == "error" and error["code"] == "unknown_target" and error["conn"] == 987654
        ws.send(b"\xc1garbage")  # and a malformed frame is an error, not the end of the relay
        assert envelope.unpack(ws.recv(timeout=10), 1 << 16)["code"] == "bad_frame"
    finally:
        ws.close()


def test_it_keeps_activations_secret_from_the_relay_and_fails_a_tampered_step_cleanly(relayed):
    """§10.4: the relay sees ciphertext only; a flipped bit fails the step with bad_seal; the node goes on."""
    _, _, recording, spied = relayed
    RecordingHub.seen.clear()
    span = RemoteSpan(spied.address, timeout=30)
    try:
        run_steps(span, "spied", 1)
        sent = hidden(3, seed=0).data
        assert RecordingHub.seen and not any(sent[:64] in f for f in RecordingHub.seen)
        assert not any(b"spied" in f or b"open_session" in f for f in RecordingHub.seen)
        span.request(OpenSession(session_id="tampered", max_length=32))
        RecordingHub.tamper_next = True
        with pytest.raises(RemoteError) as err:
            span.request(Step(session_id="tampered", position=0, hidden=hidden()))
        assert err.value.code == "bad_seal"
    finally:
        span.close()
    again = RemoteSpan(spied.address, timeout=30)  # the node still serves new connections
    try:
        assert len(run_steps(again, "after", 1)) == 1
    finally:
        again.close()


def test_it_refuses_plaintext_on_a_secure_connection(relayed):
    """§10.3: after secure_hello every frame must be sealed; a plain one ends the connection with bad_seal."""
    _, node, _, _ = relayed
    span = RemoteSpan(node.url, timeout=10, secure=True)
    try:
        span._ws.send(msgpack.packb({"v": 1, "type": "info", "id": 9}))
        with pytest.raises(RemoteError) as err:
            span.receive(10)
        assert err.value.code == "bad_seal"
    finally:
        span.close()


def test_it_relays_through_a_node_started_with_relay_capacity(tiny_models, tmp_path):
    """§9.1: a directly reachable node with --relay-capacity carries nodes behind NAT at its URL + /relay."""
    model = str(tiny_models["llama"])
    common = ["--backend", "torch", "--no-measure"]
    host = start_node(model, "0:3", extra_args=[*common, "--relay-capacity", "2"], log_path=tmp_path / "host.log")
    guest = None
    try:
        relay_url = host.url + "/relay"
        guest = start_node(
            model, "3:6", extra_args=[*common, "--relay", "always", "--relays", relay_url],
            log_path=tmp_path / "guest.log",
        )  # fmt: skip
        assert guest.address.startswith(relay_url + "/")
        span = RemoteSpan(guest.address, timeout=30)
        try:
            assert span.secure and span.info().start_block == 3
        finally:
            span.close()
        own = RemoteSpan(host.url, timeout=30)  # the host still serves its own span on the same port
        try:
            assert own.info().start_block == 0
        finally:
            own.close()
    finally:
        for p in (guest, host):
            if p is not None:
                p.process.kill()
                p.process.wait()


def test_a_node_relaying_for_others_never_runs_steps_on_its_event_loop(tiny_models):
    """A lone step run inline would hold up every frame it relays for as long as the step takes."""
    from swarmnode.server.config import NodeConfig
    from swarmnode.server.node import INLINE_S, Node

    base = dict(model=str(tiny_models["llama"]), blocks="0:2", backend="torch", dtype="float32")
    assert Node(NodeConfig(**base)).scheduler.inline_s == INLINE_S > 0
    assert Node(NodeConfig(**base, relay_capacity=2)).scheduler.inline_s == 0.0
