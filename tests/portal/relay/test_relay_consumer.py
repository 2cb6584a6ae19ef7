"""The portal's relay consumers (spec §9): node links authenticate with a node token and a signature;
clients' frames pass through untouched; unknown targets and impostors get errors."""

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator

from portal.accounts.models import NodeToken
from portal.asgi import application
from portal.relay.models import RelayedNode
from portal.swarm import tracker
from swarmnode.discovery import PeerInfo
from swarmnode.protocol import decode
from swarmnode.protocol import relay as envelope
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import key_id

pytestmark = pytest.mark.django_db(transaction=True)

HOST = [(b"host", b"portal.test")]  # no Origin header: nodes and programs send none


@pytest.fixture(autouse=True)
def _portal_test_is_our_host(settings):
    """The relay names itself only by a host the operator lists (spec §9.2)."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "portal.test"]


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test runs its own event loop: a Redis channel layer (the services run) must not outlive it."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def _run(fn):
    return async_to_sync(fn)()


async def _recv(ws, timeout=5):
    return envelope.unpack(await ws.receive_from(timeout=timeout), 1 << 20)


async def _attach(identity, token, claimed=None):
    """A node link through the whole handshake; returns (communicator, final reply)."""
    ws = WebsocketCommunicator(application, "/ws/relay", headers=HOST)
    connected, _ = await ws.connect()
    assert connected
    public_key = claimed or identity.public_key
    await ws.send_to(bytes_data=envelope.pack("relay_hello", id=3, public_key=public_key, token=token))
    challenge = await _recv(ws)
    if challenge["type"] == "error":
        return ws, challenge
    assert challenge["relay"] == "ws://portal.test/ws/relay"
    proof = identity.sign(envelope.proof_message(challenge["nonce"], challenge["relay"], public_key))
    await ws.send_to(bytes_data=envelope.pack("relay_proof", id=3, signature=proof))
    return ws, await _recv(ws)


@pytest.fixture
def token(owner):
    return NodeToken.create_for(owner, "home gpu")[1]


def test_it_attaches_a_node_and_carries_its_clients_frames_both_ways(token):
    """§9.2, §9.4: registered at R/<key_id>; client frames arrive as relay_data, replies go back as they were."""
    node = NodeIdentity.generate()

    async def scenario():
        link, reply = await _attach(node, token)
        assert reply["type"] == "relay_registered"
        assert reply["address"] == f"ws://portal.test/ws/relay/{key_id(node.public_key)}"
        assert reply["nodes"] == 1 and reply["reachable"] == "unchecked"
        client = WebsocketCommunicator(application, f"/ws/relay/{reply['key_id']}", headers=HOST)
        assert (await client.connect())[0]
        opened = await _recv(link)
        assert opened["type"] == "relay_open"
        await client.send_to(bytes_data=b"\x01opaque ciphertext")
        data = await _recv(link)
        assert data == {"type": "relay_data", "conn": opened["conn"], "data": b"\x01opaque ciphertext"}
        await link.send_to(bytes_data=envelope.pack_data(opened["conn"], b"\x02answer"))
        assert await client.receive_from(timeout=5) == b"\x02answer"
        await client.disconnect()
        closed = await _recv(link)
        assert closed["type"] == "relay_close" and closed["conn"] == opened["conn"]
        await link.disconnect()
        assert not await database_sync_to_async(RelayedNode.objects.exists)()

    _run(scenario)


def test_it_closes_a_nodes_clients_when_the_node_goes(token):
    node = NodeIdentity.generate()

    async def scenario():
        link, reply = await _attach(node, token)
        client = WebsocketCommunicator(application, f"/ws/relay/{reply['key_id']}", headers=HOST)
        await client.connect()
        await _recv(link)
        await link.disconnect()
        assert (await client.receive_output(timeout=5))["type"] == "websocket.close"
        await client.disconnect()

    _run(scenario)


def test_it_answers_frames_for_an_unknown_target_with_an_error(token):
    """§9.4: nobody attached as that key id; a node writing to an unknown connection gets an error too."""
    node = NodeIdentity.generate()

    async def scenario():
        stranger = key_id(NodeIdentity.generate().public_key)
        client = WebsocketCommunicator(application, f"/ws/relay/{stranger}", headers=HOST)
        assert (await client.connect())[0]
        await client.send_to(bytes_data=b"anything")
        error = decode(await client.receive_from(timeout=5))
        assert error.code == "unknown_target"
        await client.disconnect()
        link, _ = await _attach(node, token)
        await link.send_to(bytes_data=envelope.pack_data(4242, b"to nobody"))
        error = await _recv(link)
        assert error["type"] == "error" and error["code"] == "unknown_target" and error["conn"] == 4242
        await link.disconnect()

    _run(scenario)


def test_it_refuses_a_node_without_a_valid_token(db):
    async def scenario():
        link, reply = await _attach(NodeIdentity.generate(), "lsn_forged")
        assert reply["type"] == "error" and reply["code"] == "unauthorized"
        await link.disconnect()

    _run(scenario)


def test_it_refuses_a_node_posing_as_another_nodes_key(token, other, smollm2):
    """§9.2: the signature must come from the claimed key; a key announced by another account is refused outright."""
    victim = NodeIdentity.generate()
    impostor = NodeIdentity.generate()

    async def scenario():
        link, reply = await _attach(impostor, token, claimed=victim.public_key)
        assert reply["type"] == "error" and reply["code"] == "bad_proof"
        await link.disconnect()
        assert not await database_sync_to_async(RelayedNode.objects.exists)()

    _run(scenario)
    other_token = NodeToken.create_for(other, "bob's gpu")[0]
    reg = PeerInfo(
        model="smollm2", start_block=0, end_block=10, url="ws://127.0.0.1:9/x", backend="torch", device="cpu",
        dtype="float32", version="0.1.0", public_key=victim.public_key,
    )  # fmt: skip
    tracker.register_node(other_token, reg)

    async def stolen_key():  # even with the victim's own signature, alice's token may not carry bob's node
        link, reply = await _attach(victim, token)
        assert reply["type"] == "error" and reply["code"] == "key_in_use"
        await link.disconnect()

    _run(stolen_key)


def test_it_refuses_malformed_handshakes_without_crashing(token):
    async def scenario():
        for frame in (b"\xc1", envelope.pack("relay_data", conn=1, data=b""), envelope.pack("relay_hello", id=1)):
            ws = WebsocketCommunicator(application, "/ws/relay/", headers=HOST)
            assert (await ws.connect())[0]
            await ws.send_to(bytes_data=frame)
            reply = await _recv(ws)
            assert reply["type"] == "error"
            await ws.disconnect()

    _run(scenario)


def test_it_still_checks_the_origin_of_browser_websockets():
    """Only /ws/relay... skips the origin check: the health map's socket still refuses a foreign origin."""

    async def scenario():
        ws = WebsocketCommunicator(
            application, "/ws/swarm/health/", headers=[*HOST, (b"origin", b"http://evil.example")]
        )
        connected, _ = await ws.connect()
        assert not connected

    _run(scenario)


def test_it_tells_its_load_to_a_node_choosing_a_relay(token):
    """§9.5: relay_status gets relay_load without attaching."""

    async def scenario():
        link, _ = await _attach(NodeIdentity.generate(), token)
        ws = WebsocketCommunicator(application, "/ws/relay", headers=HOST)
        assert (await ws.connect())[0]
        await ws.send_to(bytes_data=envelope.pack("relay_status", id=5))
        load = await _recv(ws)
        assert load == {"type": "relay_load", "id": 5, "nodes": 1, "capacity": 256, "clients": 0}
        await ws.disconnect()
        await link.disconnect()

    _run(scenario)


def test_it_closes_a_link_that_never_completes_the_handshake(token, monkeypatch):
    monkeypatch.setattr("portal.relay.consumers.HANDSHAKE_TIMEOUT_S", 0.2)

    async def scenario():
        ws = WebsocketCommunicator(application, "/ws/relay", headers=HOST)
        assert (await ws.connect())[0]
        reply = await _recv(ws)
        assert reply["type"] == "error" and reply["code"] == "timeout"
        assert (await ws.receive_output(timeout=5))["type"] == "websocket.close"
        await ws.disconnect()

    _run(scenario)
