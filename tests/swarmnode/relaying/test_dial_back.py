"""Dial-back is no open door (spec §9.3, #17 finding 12): a relay dials only the address a node's link comes from,
and private addresses only when allowed. The attacker is a stranger's node attaching to a real relay; the
"third party" is a listening socket on another loopback address that counts every connection it gets."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from swarmnode.protocol import relay as envelope
from swarmnode.relaying import DialRefused, check_dial_back, dial_target, is_public_address, serves_privately
from swarmnode.server.relay_hub import RelayLimits, serve_relay
from swarmnode.trust.identity import NodeIdentity


class Listener:
    """A TCP port that counts the connections it accepts (and closes them)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.accepted = 0

    async def __aenter__(self) -> Listener:
        async def accept(reader, writer):
            self.accepted += 1
            writer.close()

        self.server = await asyncio.start_server(accept, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://{self.host}:{self.port}/layerswarm/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


async def _relay(allow_private: bool | None):
    ready = asyncio.get_running_loop().create_future()
    limits = RelayLimits(capacity=4, allow_private_peers=allow_private, dial_back_timeout_s=2.0)
    task = asyncio.create_task(serve_relay("127.0.0.1", 0, limits, ready=ready))
    return await ready, task


async def _attach_asking_dial_back(relay_url: str, dial_back: str) -> dict:
    """A stranger's node attaches (a valid handshake with its own key) and names ``dial_back``."""
    node = NodeIdentity.generate()
    async with connect(relay_url) as ws:
        await ws.send(envelope.pack("relay_hello", id=1, public_key=node.public_key, dial_back=dial_back))
        challenge = envelope.unpack(await ws.recv(), 1 << 16)
        proof = node.sign(envelope.proof_message(challenge["nonce"], challenge["relay"], node.public_key))
        await ws.send(envelope.pack("relay_proof", id=1, signature=proof))
        return envelope.unpack(await ws.recv(), 1 << 16)


def test_it_never_dials_a_third_party_host_a_node_names():
    """The node's link comes from 127.0.0.1; it names 127.0.0.2 (someone else): refused, and nobody is dialled.
    The same request naming its own address is dialled (so the counting socket does see a relay's dial)."""

    async def scenario():
        hub, task = await _relay(allow_private=True)  # loopback allowed: only the address rule is tested
        try:
            async with Listener("127.0.0.2") as victim, Listener("127.0.0.1") as own:
                reply = await _attach_asking_dial_back(hub.base_url, victim.url)
                assert reply["type"] == "relay_registered" and reply["reachable"] == "no"
                await asyncio.sleep(0.2)
                assert victim.accepted == 0
                await _attach_asking_dial_back(hub.base_url, own.url)
                assert own.accepted == 1
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_it_refuses_loopback_targets_with_the_switch_off_and_allows_them_on_loopback_by_default():
    async def scenario():
        off, t1 = await _relay(allow_private=False)
        auto, t2 = await _relay(allow_private=None)  # auto: the relay itself serves on loopback, so it may
        try:
            async with Listener("127.0.0.1") as own:
                reply = await _attach_asking_dial_back(off.base_url, own.url)
                assert reply["reachable"] == "no"
                await asyncio.sleep(0.2)
                assert own.accepted == 0
                await _attach_asking_dial_back(auto.base_url, own.url)
                assert own.accepted == 1
        finally:
            t1.cancel()
            t2.cancel()

    asyncio.run(scenario())


def test_check_dial_back_without_a_known_peer_address_dials_nothing():
    async def scenario():
        async with Listener("127.0.0.1") as own:
            assert not await check_dial_back(own.url, "k", 1.0, None, allow_private=True)
            assert own.accepted == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("url", "peer", "allow", "code"),
    [
        ("http://127.0.0.1:1/", "127.0.0.1", True, "bad_url"),
        ("ws://:80/", "127.0.0.1", True, "bad_url"),
        ("ws://127.0.0.1:99999/", "127.0.0.1", True, "bad_url"),
        ("ws://203.0.113.9:8000/", "198.51.100.7", True, "not_peer_address"),  # a third party
        ("ws://169.254.169.254/latest/meta-data", "169.254.169.254", False, "private_address"),  # cloud metadata
        ("ws://10.0.0.5:31330/", "10.0.0.5", False, "private_address"),
        ("ws://[::1]:31330/", "::1", False, "private_address"),
        ("ws://224.0.0.1:31330/", "224.0.0.1", False, "private_address"),  # multicast
        ("ws://127.0.0.1:31330/", "::ffff:127.0.0.1", False, "private_address"),  # dual-stack notation
        ("ws://127.0.0.1:31330/", "", True, "not_peer_address"),
    ],
)
def test_dial_target_refuses(url, peer, allow, code):
    with pytest.raises(DialRefused) as err:
        asyncio.run(dial_target(url, peer, allow))
    assert err.value.code == code


def test_dial_target_dials_the_peers_own_address():
    assert asyncio.run(dial_target("wss://8.8.8.8/x", "8.8.8.8")) == ("8.8.8.8", 443)
    assert asyncio.run(dial_target("ws://127.0.0.1:5/x", "::ffff:127.0.0.1", True)) == ("127.0.0.1", 5)
    assert asyncio.run(dial_target("ws://localhost:5/x", "127.0.0.1", True)) == ("127.0.0.1", 5)  # a name: resolved


def test_what_counts_as_public():
    assert is_public_address("8.8.8.8") and is_public_address("2001:4860:4860::8888")
    for ip in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.0.1", "169.254.1.1", "100.64.0.1", "::1", "fe80::1"):
        assert not is_public_address(ip), ip
    assert not is_public_address("not an ip")
    assert serves_privately("127.0.0.1") and serves_privately("localhost") and serves_privately("192.168.1.2")
    assert not serves_privately("0.0.0.0") and not serves_privately("relay.example") and not serves_privately("8.8.8.8")
