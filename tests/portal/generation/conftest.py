"""Fixtures of the gateway trust tests: a tiny model's nodes run by several owners, registered on the tracker
as each owner's node would register itself, and a byte-capturing proxy to look at what crosses the wire."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.contrib.auth.models import User

from portal.accounts.models import NodeToken
from portal.swarm import tracker
from portal.swarm.models import Node, SwarmModel
from swarmnode.client.remote import RemoteSpan
from swarmnode.launcher import start_node
from tests.swarmnode.conftest import make_tiny_model

MODEL = "gw-tiny"  # the checkpoint directory's name: what the nodes announce and the gateway resolves
ARGS = ["--backend", "torch", "--no-measure", "--num-threads", "1"]
NODES = {  # name: (blocks, extra serve arguments)
    "low": ("0:3", []),  # honest; the tests take its standing away
    "good": ("0:3", []),
    "bad": ("0:3", ["--corrupt-fraction", "1.0"]),  # perturbs every step's output, signs it as usual
    "tail": ("3:6", []),
}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    """A folder holding the tiny checkpoint ``gw-tiny`` (tests ``chdir`` here so the gateway finds it by name)."""
    from swarmnode.models import resolve_model

    root = tmp_path_factory.mktemp("gw-models")
    make_tiny_model("llama", root / MODEL, resolve_model("smollm2"))
    return root


@pytest.fixture(scope="module")
def nodes(model_root, tmp_path_factory):
    """Real node processes of the tiny model, by name (see :data:`NODES`)."""
    logs = tmp_path_factory.mktemp("gw-logs")
    running = {}
    try:
        for name, (blocks, extra) in NODES.items():
            running[name] = start_node(
                str(model_root / MODEL), blocks, extra_args=ARGS + extra, log_path=logs / f"{name}.log"
            )
        yield running
    finally:
        for node in running.values():
            node.process.kill()
            node.process.wait()


@pytest.fixture
def gateway_dir(model_root, monkeypatch, settings):
    """The gateway resolves the model by name from here; no static peers, no audits unless a test asks."""
    monkeypatch.chdir(model_root)
    settings.CHAT_SWARM_PEERS = []
    settings.CHAT_GATEWAY_AUDIT_RATE = 0.0
    settings.CHAT_GATEWAY_SECURE = True
    SwarmModel.objects.get_or_create(name=MODEL, defaults={"num_blocks": 6, "hidden_size": 64})
    return model_root


@pytest.fixture
def register(gateway_dir):
    """``register(url, owner)``: the node at ``url`` registers with ``owner``'s node token and heartbeats."""
    tokens: dict[str, NodeToken] = {}

    def make(url: str, owner: str) -> Node:
        if owner not in tokens:
            user = User.objects.get_or_create(username=owner)[0]
            tokens[owner] = NodeToken.create_for(user, f"{owner}'s machine")[0]
        span = RemoteSpan(url, timeout=10)
        try:
            info = span.info()  # what the node announces, as its own registration carries it
        finally:
            span.close()
        node, _ = tracker.register_node(tokens[owner], info)
        tracker.record_heartbeat(tokens[owner], node.pk, tracker.Beat())
        node.refresh_from_db()
        assert node.state == Node.State.ONLINE
        return node

    return make


class CaptureProxy:
    """A TCP proxy on loopback that keeps every byte a node sent back (what an eavesdropper on the path sees)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.from_node = bytearray()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)

    def url_for(self, node_url: str) -> str:
        """``node_url`` through this proxy."""
        return node_url.replace(f":{self.target_port}/", f":{self.port}/")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self._loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    async def _handle(self, reader, writer) -> None:
        node_reader, node_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src, dst, keep: bytearray | None) -> None:
            try:
                while data := await src.read(65536):
                    if keep is not None:
                        keep.extend(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, node_writer, None), pump(node_reader, writer, self.from_node))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
