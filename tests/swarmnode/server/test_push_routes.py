"""Push is no open proxy (spec §7.5): a node dials only nodes of its swarm, on addresses it may dial."""

import asyncio
import socket

import numpy as np
import pytest
from websockets.asyncio.server import serve
from websockets.sync.client import connect

from swarmnode.discovery import PeerInfo
from swarmnode.protocol import (
    Error,
    Info,
    InfoReply,
    OpenSession,
    SessionOpened,
    Step,
    decode,
    encode,
    tensor_from_numpy,
)
from swarmnode.server.config import NodeConfig
from swarmnode.server.push import PushRelay
from swarmnode.server.push_routes import (
    PushRoutes,
    RouteRefused,
    allows_private,
    is_private_host,
    resolve_address,
    split_url,
)
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import key_id, node_accept

KEY = "r" * 32


def _hidden():
    return tensor_from_numpy(np.random.default_rng(1).standard_normal((1, 2, 64)).astype(np.float32))


def test_a_client_cannot_make_a_node_dial_a_url_of_its_choosing(tiny_node):
    """The attack: a stranger opens a push session and names its own listening socket (standing in for
    an internal service or a victim) as the next hop. The node refuses with ``push_refused`` and the
    socket never sees a connection; the node keeps serving."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    target = f"ws://127.0.0.1:{listener.getsockname()[1]}/layerswarm/v1"
    ws = connect(tiny_node.url, compression=None, max_size=None)
    try:
        ws.send(encode(OpenSession(id=1, session_id="ssrf", max_length=16, push_key=KEY)))
        assert isinstance(decode(ws.recv(timeout=30)), SessionOpened)
        for i in range(3):  # again and again: never dialled, not even once the "view" was re-read
            ws.send(
                encode(
                    Step(id=10 + i, session_id="ssrf", position=2 * i, hidden=_hidden(), push_key=KEY, route=(target,))
                )
            )
            reply = decode(ws.recv(timeout=30))
            assert isinstance(reply, Error) and reply.code == "push_refused" and reply.id == 10 + i
            assert target in reply.message and "not a node of this swarm" in reply.message
        listener.settimeout(1.0)
        with pytest.raises(TimeoutError):
            listener.accept()
        ws.send(encode(Info(id=5)))
        assert isinstance(decode(ws.recv(timeout=30)), InfoReply)
    finally:
        ws.close()
        listener.close()


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.1.2.3", "192.168.0.10", "172.16.5.5", "169.254.169.254", "100.64.0.1", "::1", "fd00::1"],
)
def test_it_refuses_private_loopback_and_metadata_addresses_unless_allowed(host):
    with pytest.raises(RouteRefused, match="private"):
        asyncio.run(resolve_address(host, 80, private_ok=False))
    assert asyncio.run(resolve_address(host, 80, private_ok=True)) == host


def test_it_dials_the_public_address_it_checked():
    assert asyncio.run(resolve_address("8.8.8.8", 443, private_ok=False)) == "8.8.8.8"


def test_private_hops_are_allowed_only_where_the_operator_says_so():
    assert allows_private("allow", "203.0.113.7") and not allows_private("refuse", "127.0.0.1")
    assert allows_private("auto", "127.0.0.1") and allows_private("auto", "localhost")
    assert allows_private("auto", "10.0.0.5")  # a node on a LAN pushes to its LAN neighbours
    assert not allows_private("auto", "0.0.0.0") and not allows_private("auto", "node.example.org")
    assert is_private_host("::1") and not is_private_host("::")
    with pytest.raises(ValueError):
        allows_private("sometimes", "127.0.0.1")


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/", "file:///etc/passwd", "ws://user:pw@node.example.org/", "ws:///nohost", "ws://h:99999/"]
)
def test_it_refuses_urls_that_are_not_plain_node_urls(url):
    with pytest.raises(RouteRefused):
        split_url(url)


def test_it_reads_the_port_of_a_node_url():
    assert split_url("wss://node.example.org/layerswarm/v1") == ("node.example.org", 443)
    assert split_url("ws://127.0.0.1:8765/layerswarm/v1") == ("127.0.0.1", 8765)


class _Node:
    """What PushRoutes and PushRelay read of a node: config, URL, identity, model, limits."""

    def __init__(self, **config):
        self.config = NodeConfig(**config)
        self.limits = self.config.limits
        self.url = self.address = "ws://127.0.0.1:1/layerswarm/v1"
        self.identity = NodeIdentity.generate()
        self.model_name = "tiny"


def _peer(url, public_key):
    return PeerInfo(url=url, model="tiny", start_block=0, end_block=6, public_key=public_key)


def test_a_relay_address_must_carry_the_key_id_of_the_keys_the_node_announced():
    """§10.5 for push: a relay answering our probe with keys of its own gets no push link."""
    honest, impostor = NodeIdentity.generate(), NodeIdentity.generate()
    good = f"ws://127.0.0.1:2/layerswarm/v1/relay/{key_id(honest.public_key)}"
    forged = f"ws://127.0.0.1:3/layerswarm/v1/relay/{key_id(honest.public_key)}"
    view = [_peer(good, honest.public_key), _peer(forged, impostor.public_key)]
    routes = PushRoutes(_Node(peers=("ws://127.0.0.1:2/x",)), view=lambda: view)
    assert asyncio.run(routes.check(good)).public_key == honest.public_key
    with pytest.raises(RouteRefused, match="key id"):
        asyncio.run(routes.check(forged))


def test_strangers_naming_unknown_urls_cannot_make_a_node_hammer_its_tracker():
    reads = []
    routes = PushRoutes(_Node(peers=("ws://127.0.0.1:2/x",)), view=lambda: reads.append(1) or [])

    async def ask_many():
        for i in range(20):
            with pytest.raises(RouteRefused):
                await routes.check(f"ws://127.0.0.1:{1000 + i}/layerswarm/v1")

    asyncio.run(ask_many())
    assert len(reads) == 1  # once per push_view_refresh (30 s), however many unknown URLs


def test_a_node_keeps_at_most_push_max_links_open(tmp_path):
    """Links are capped (least recently used closed first): a route cannot pile up connections."""
    servers = [NodeIdentity.generate() for _ in range(3)]
    views = []

    async def main():
        opened, closed = [], []

        def handler_for(identity):
            async def handler(ws):
                opened.append(identity)
                reply, _ = node_accept(identity, await ws.recv())
                await ws.send(reply)
                try:
                    await ws.wait_closed()
                finally:
                    closed.append(identity)

            return handler

        running = [await serve(handler_for(i), "127.0.0.1", 0) for i in servers]
        urls = [f"ws://127.0.0.1:{s.sockets[0].getsockname()[1]}/layerswarm/v1" for s in running]
        views[:] = [_peer(u, i.public_key) for u, i in zip(urls, servers, strict=True)]
        relay = PushRelay(_Node(peers=(urls[0],), push_max_links=2), routes=None)
        relay.routes = PushRoutes(relay.node, view=lambda: views)
        for url in urls:
            await relay._link(url)
        await asyncio.sleep(0.2)
        assert list(relay._links) == urls[1:]  # the first, least recently used, was closed
        assert closed == servers[:1] and len(opened) == 3
        await relay.close()
        for s in running:
            s.close()

    asyncio.run(main())


def test_only_a_local_swarm_dials_nodes_it_does_not_list_and_only_by_their_key():
    """A node with neither tracker nor peers, on loopback (a client's local swarm), dials a hop whose key the
    route names; a node that knows its swarm, or serves the open network, does not."""
    other = NodeIdentity.generate().public_key
    url = "ws://127.0.0.1:5/layerswarm/v1"
    local = PushRoutes(_Node())
    assert local.dials_unlisted
    assert asyncio.run(local.check(f"{url}#{other}")).public_key == other
    with pytest.raises(RouteRefused, match="not a node of this swarm"):
        asyncio.run(local.check(url))  # no key named: nothing to prove
    assert not PushRoutes(_Node(peers=("ws://127.0.0.1:2/x",)), view=lambda: []).dials_unlisted
    assert not PushRoutes(_Node(host="0.0.0.0")).dials_unlisted
    assert not PushRoutes(_Node(push_unlisted="refuse")).dials_unlisted
    assert PushRoutes(_Node(host="0.0.0.0", push_unlisted="allow")).dials_unlisted


def test_a_route_cannot_name_other_keys_than_the_swarm_announced():
    honest, impostor = NodeIdentity.generate(), NodeIdentity.generate()
    url = "ws://127.0.0.1:6/layerswarm/v1"
    routes = PushRoutes(_Node(peers=(url,)), view=lambda: [_peer(url, honest.public_key)])
    assert asyncio.run(routes.check(f"{url}#{honest.public_key}")).url == url
    with pytest.raises(RouteRefused, match="other keys"):
        asyncio.run(routes.check(f"{url}#{impostor.public_key}"))
