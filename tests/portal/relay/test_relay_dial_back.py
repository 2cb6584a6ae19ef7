"""The portal relay's dial-back and self-naming are no open door (spec §9.2, §9.3; #17 findings 5 and 12).

A stranger with a free account and a node token attaches and names a URL for the portal to dial: only the
address the link comes from is dialled, and private ones only under ``ALLOW_PRIVATE_PEERS``. A relay run by an
attacker cannot borrow the portal's challenge by sending its own host name as ``Host``.
"""

import asyncio
import os
import subprocess
import sys

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator

from portal.accounts.models import NodeToken
from portal.asgi import application
from swarmnode.protocol import relay as envelope
from swarmnode.trust.identity import NodeIdentity

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_channel_layer(settings):
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "portal.test"]
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def token(owner):
    return NodeToken.create_for(owner, "home gpu")[1]


class Listener:
    """A TCP port that counts the connections it accepts (and closes them)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.accepted = 0

    async def __aenter__(self):
        async def accept(reader, writer):
            self.accepted += 1
            writer.close()

        self.server = await asyncio.start_server(accept, self.host, 0)
        self.url = f"ws://{self.host}:{self.server.sockets[0].getsockname()[1]}/layerswarm/v1"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


async def _attach(token: str, dial_back: str = "", peer: str = "127.0.0.1", host: bytes = b"portal.test"):
    """A node link from ``peer`` (what daphne puts in the scope) through the whole handshake: the final reply."""
    node = NodeIdentity.generate()
    ws = WebsocketCommunicator(application, "/ws/relay", headers=[(b"host", host)])
    ws.scope["client"] = [peer, 40000]
    assert (await ws.connect())[0]
    hello = envelope.pack("relay_hello", id=1, public_key=node.public_key, token=token, dial_back=dial_back)
    await ws.send_to(bytes_data=hello)
    reply = envelope.unpack(await ws.receive_from(timeout=5), 1 << 16)
    if reply["type"] == "relay_challenge":
        proof = node.sign(envelope.proof_message(reply["nonce"], reply["relay"], node.public_key))
        await ws.send_to(bytes_data=envelope.pack("relay_proof", id=1, signature=proof))
        reply = envelope.unpack(await ws.receive_from(timeout=10), 1 << 16)
    await ws.disconnect()
    return reply


def test_it_never_dials_a_third_party_host_a_node_names(token, settings):
    """The link comes from 127.0.0.1, the URL names 127.0.0.2: refused unseen. Its own address is dialled."""
    settings.ALLOW_PRIVATE_PEERS = True

    async def scenario():
        async with Listener("127.0.0.2") as victim, Listener("127.0.0.1") as own:
            reply = await _attach(token, dial_back=victim.url)
            assert reply["type"] == "relay_registered" and reply["reachable"] == "no"
            assert victim.accepted == 0
            await _attach(token, dial_back=own.url)
            assert own.accepted == 1

    async_to_sync(scenario)()


def test_it_refuses_loopback_targets_with_the_switch_off(token, settings):
    settings.ALLOW_PRIVATE_PEERS = False

    async def scenario():
        async with Listener("127.0.0.1") as own:
            reply = await _attach(token, dial_back=own.url)
            assert reply["type"] == "relay_registered" and reply["reachable"] == "no"
            await asyncio.sleep(0.1)
            assert own.accepted == 0

    async_to_sync(scenario)()


def test_private_peers_are_refused_by_a_production_portal_unless_allowed():
    """Production (DEBUG off) must not dial private addresses unless the operator says so."""
    code = "from django.conf import settings; import django; django.setup(); print(settings.ALLOW_PRIVATE_PEERS)"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_VERSION", "ALLOW_PRIVATE_PEERS", "DJANGO_DEBUG")}
    env.update(DJANGO_SETTINGS_MODULE="portal.settings", DJANGO_SECRET_KEY="x" * 50, DJANGO_DEBUG="0")
    run = [sys.executable, "-c", code]
    assert subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout.strip() == "False"
    env["ALLOW_PRIVATE_PEERS"] = "1"
    assert subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_it_does_not_name_itself_after_a_host_that_is_not_ours(token):
    """An attacker's relay opening a link here with ``Host: evil.example`` would get a challenge naming itself,
    which a node that dialled evil.example would sign: the portal answers bad_host instead of a challenge."""

    async def scenario():
        reply = await _attach(token, host=b"evil.example")
        assert reply["type"] == "error" and reply["code"] == "bad_host"
        ok = await _attach(token, host=b"portal.test")
        assert ok["type"] == "relay_registered"

    async_to_sync(scenario)()
