"""The health map's websocket: current health on connect, a push whenever coverage changes."""

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from portal.accounts.models import NodeToken
from portal.asgi import application
from portal.swarm import tracker
from portal.swarm.tracker import Beat
from swarmnode.discovery import PeerInfo

pytestmark = pytest.mark.django_db(transaction=True)

SPAN = PeerInfo(
    model="smollm2", start_block=0, end_block=10, url="ws://127.0.0.1:1/x", backend="torch", device="cpu",
    dtype="float32", version="0.1.0",
)  # fmt: skip


def _run(coro_fn):
    return async_to_sync(coro_fn)()


def _connect(path: str = "/ws/swarm/health/?model=smollm2") -> WebsocketCommunicator:
    return WebsocketCommunicator(application, path, headers=[(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")])


def test_it_sends_the_current_health_on_connect(smollm2):
    async def scenario():
        ws = _connect()
        connected, _ = await ws.connect()
        assert connected
        health = await ws.receive_json_from(timeout=5)
        assert health["models"][0]["banner"] == "broken: blocks 0-29 uncovered"
        await ws.disconnect()

    _run(scenario)


def test_it_pushes_coverage_changes_but_not_routine_heartbeats(owner, smollm2):
    token = NodeToken.create_for(owner, "gpu")[0]

    async def scenario():
        ws = _connect()
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        node, _ = await database_sync_to_async(tracker.register_node)(token, SPAN)
        joining = await ws.receive_json_from(timeout=5)
        assert joining["models"][0]["nodes"][0]["state"] == "joining"
        await database_sync_to_async(tracker.record_heartbeat)(token, node.pk, Beat())
        online = await ws.receive_json_from(timeout=5)
        assert online["models"][0]["nodes"][0]["state"] == "online"
        assert online["models"][0]["uncovered_blocks"] == list(range(10, 30))
        await database_sync_to_async(tracker.record_heartbeat)(token, node.pk, Beat())
        assert await ws.receive_nothing(timeout=0.5)  # still online: nothing to redraw
        await database_sync_to_async(tracker.leave)(token, node.pk)
        left = await ws.receive_json_from(timeout=5)
        assert left["models"][0]["nodes"][0]["state"] == "offline"
        await ws.disconnect()

    _run(scenario)


def test_it_refuses_websockets_from_foreign_origins(smollm2):
    async def scenario():
        ws = WebsocketCommunicator(
            application, "/ws/swarm/health/", headers=[(b"host", b"127.0.0.1"), (b"origin", b"http://evil.example")]
        )
        connected, _ = await ws.connect()
        assert not connected

    _run(scenario)
