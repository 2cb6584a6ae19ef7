"""Relays run by strangers (spec §9.2, §9.5; #17 finding 5).

* A node attaching to a relay run by an attacker never sends it the node token (the credential of its owner's
  account): only the portal's own relay gets it, over TLS or on loopback. The relays here are real websocket
  servers the test runs, recording every byte the node sends; the node is a real ``swarmnode serve`` process.
* A relay that passes another relay's challenge on to a node (to attach there as that node) gets no signature:
  the challenge must name the relay the node dialled. A relay rewriting the name gets a proof that the other
  relay refuses.
* A relay claiming to be empty does not jump the queue of relays to attach to.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from swarmnode.launcher import start_node
from swarmnode.protocol import Limits
from swarmnode.protocol import relay as envelope
from swarmnode.relaying.choice import may_send_token, order_by_load
from swarmnode.server.relay_hub import RelayHub, RelayLimits, serve_relay
from swarmnode.server.relay_link import RelayLink, RelayRefused
from swarmnode.trust.identity import NodeIdentity

TOKEN = "lsn_victim_0123456789abcdef"  # what the node must keep from strangers


class Tap:
    """A websocket that records every frame received on it (what the relay's operator can see)."""

    def __init__(self, ws, seen: list) -> None:
        self._ws, self._seen = ws, seen

    async def recv(self, *args, **kwargs):
        frame = await self._ws.recv(*args, **kwargs)
        self._seen.append(frame)
        return frame

    async def __aiter__(self):
        async for frame in self._ws:
            self._seen.append(frame)
            yield frame

    def __getattr__(self, name):
        return getattr(self._ws, name)


class RecordingRelay:
    """A real relay (``RelayHub``) serving ``path`` in a thread of the test, keeping every frame nodes send it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: list = []
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop_future = self.loop.create_future()
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self.hub = RelayHub(lambda: self.url, RelayLimits(capacity=4))

        async def handler(ws):
            rest = ws.request.path.split("?")[0][len(self.path) :]
            await self.hub.handle(Tap(ws, self.seen), rest)

        def only_websockets(connection, request):  # the "portal" here answers nothing but its relay
            return None if request.path.startswith(self.path) else connection.respond(404, "no\n")

        async with serve(handler, "127.0.0.1", 0, process_request=only_websockets, compression=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{self.port}{self.path}"
            self.started.set()
            await self.stop_future

    def start(self) -> RecordingRelay:
        self.thread.start()
        assert self.started.wait(10)
        return self

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def hellos(self) -> list[dict]:
        out = []
        for frame in list(self.seen):
            try:
                msg = envelope.unpack(frame, 1 << 20, {"relay_hello"})
            except Exception:
                continue
            out.append(msg)
        return out

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_future.set_result, None)
        self.thread.join(10)


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_node_never_sends_its_token_to_a_strangers_relay(tiny_models, tmp_path):
    """The node knows two relays: the stranger's (--relays) and its portal's own. It attaches to one, is dropped,
    attaches to the other: the portal's relay got the token, the stranger's saw every frame and never the token."""
    attacker = RecordingRelay("/layerswarm/v1/relay").start()
    portal = RecordingRelay("/ws/relay").start()  # the portal at http://127.0.0.1:PORT: its relay is /ws/relay
    node = None
    try:
        args = ["--backend", "torch", "--no-measure", "--relay", "always", "--relays", attacker.url]
        args += ["--portal", f"http://127.0.0.1:{portal.port}", "--token", TOKEN]
        node = start_node(str(tiny_models["llama"]), "0:6", extra_args=args, log_path=tmp_path / "node.log")
        first = attacker if attacker.hub.nodes else portal
        second = portal if first is attacker else attacker
        (attached,) = first.hub.nodes.values()
        first.call(first.hub._detach(attached))  # the link drops: the node moves on to its other relay
        assert _wait(lambda: bool(second.hub.nodes)), (tmp_path / "node.log").read_text()[-2000:]
        assert [h["token"] for h in portal.hellos()] == [TOKEN]  # the portal's own relay, on loopback: needed
        assert attacker.hellos() and all(h["token"] == "" for h in attacker.hellos())
        secret = TOKEN.encode()
        assert attacker.seen and not any(secret in (f if isinstance(f, bytes) else f.encode()) for f in attacker.seen)
    finally:
        if node is not None:
            node.process.kill()
            node.process.wait()
        attacker.stop()
        portal.stop()


def test_the_token_goes_only_to_the_portals_relay_over_tls_or_loopback():
    own = ["wss://portal.example/ws/relay", "ws://portal.example/ws/relay", "ws://127.0.0.1:8000/ws/relay"]
    assert may_send_token("wss://portal.example/ws/relay/", own)
    assert may_send_token("ws://127.0.0.1:8000/ws/relay", own)
    assert not may_send_token("ws://portal.example/ws/relay", own)  # plaintext across the network
    assert not may_send_token("wss://relay.attacker.example/ws/relay", own)
    assert not may_send_token("ws://127.0.0.1:9000/layerswarm/v1/relay", own)  # loopback, but not the portal's


def _stub_node() -> SimpleNamespace:
    """What :class:`RelayLink` uses of a node: its identity, frame limit and URL."""
    return SimpleNamespace(identity=NodeIdentity.generate(), limits=Limits(), url="ws://127.0.0.1:1/layerswarm/v1")


async def _honest_relay():
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_relay("127.0.0.1", 0, RelayLimits(capacity=4), ready=ready))
    return await ready, task


async def _mitm(target: str, rewrite: bool, log: dict):
    """A relay that, when a node attaches, attaches to ``target`` as that node and passes the challenge on."""

    async def handler(ws):
        hello = envelope.unpack(await ws.recv(), 1 << 16, {"relay_hello"})
        async with connect(target) as upstream:
            await upstream.send(envelope.pack("relay_hello", id=1, public_key=hello["public_key"]))
            challenge = envelope.unpack(await upstream.recv(), 1 << 16)
            named = log["url"] if rewrite else challenge["relay"]
            await ws.send(envelope.pack("relay_challenge", id=1, nonce=challenge["nonce"], relay=named))
            try:
                proof = await asyncio.wait_for(ws.recv(), 3.0)
            except Exception:
                return
            log["proofs"] += 1
            await upstream.send(proof)
            await ws.send(await upstream.recv())  # what the target said to "us"

    server = await serve(handler, "127.0.0.1", 0)
    log["url"] = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/layerswarm/v1/relay"
    return server


@pytest.mark.parametrize("rewrite", [False, True], ids=["passes-the-challenge-on", "renames-the-challenge"])
def test_a_relay_cannot_attach_elsewhere_as_the_node_that_dialled_it(rewrite):
    """Passed on as is, the challenge names relay A, not the relay dialled: the node signs nothing (wrong_relay).
    Renamed to the relay dialled, the node signs, and A refuses that proof made for another relay (bad_proof)."""

    async def scenario():
        hub, task = await _honest_relay()
        log = {"proofs": 0}
        server = await _mitm(hub.base_url, rewrite, log)
        node = _stub_node()
        link = RelayLink(node, lambda: [log["url"]])
        try:
            with pytest.raises(RelayRefused) as err:
                await link.attach(log["url"])
            assert err.value.code == ("bad_proof" if rewrite else "wrong_relay")
            assert log["proofs"] == (1 if rewrite else 0)
            assert not hub.nodes  # nobody attached to A as our node
            ws, registered = await link.attach(hub.base_url)  # and the node attaches to A itself just fine
            assert registered["type"] == "relay_registered" and len(hub.nodes) == 1
            await ws.close()
        finally:
            server.close()
            task.cancel()

    asyncio.run(scenario())


async def _lying_relay(nodes: int, capacity: int, delay: float):
    async def handler(ws):
        envelope.unpack(await ws.recv(), 1 << 16, {"relay_status"})
        await asyncio.sleep(delay)
        await ws.send(envelope.pack("relay_load", id=1, nodes=nodes, capacity=capacity, clients=0))

    server = await serve(handler, "127.0.0.1", 0)
    return server, f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/layerswarm/v1/relay"


def test_a_relay_claiming_to_be_empty_does_not_jump_the_queue():
    """An honest relay a quarter full ranks before a slower one claiming 0 of a billion; nonsense ranks last."""

    async def scenario():
        hub, task = await _honest_relay()
        keep = RelayLink(_stub_node(), lambda: [])
        ws, _ = await keep.attach(hub.base_url)  # 1 of 4
        liar, liar_url = await _lying_relay(0, 10**9, delay=0.15)
        nonsense, nonsense_url = await _lying_relay(9, 2, delay=0.0)
        try:
            ranked = await order_by_load([nonsense_url, liar_url, hub.base_url])
            assert ranked == [hub.base_url, liar_url, nonsense_url]
        finally:
            await ws.close()
            liar.close()
            nonsense.close()
            task.cancel()

    asyncio.run(scenario())
