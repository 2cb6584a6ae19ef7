"""Fixtures of the chat tests: a real 3-node swarm (module-wide), websockets as a given user, node probes."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from portal.asgi import application
from swarmnode.client.remote import RemoteSpan
from swarmnode.launcher import LocalSwarm
from swarmnode.protocol import Info

HEADERS = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """Three PyTorch nodes of SmolLM2 on loopback (bit-exact with local transformers)."""
    with LocalSwarm(
        "smollm2", 30, 3, extra_args=["--backend", "torch"], log_dir=tmp_path_factory.mktemp("chat-swarm")
    ) as swarm:
        yield swarm


@pytest.fixture
def embedded_gateway(settings, swarm):
    """Consumers start a gateway in their own event loop; it reaches the swarm through CHAT_SWARM_PEERS."""
    settings.CHAT_GATEWAY_EMBEDDED = True
    settings.CHAT_SWARM_PEERS = swarm.urls
    yield swarm
    layer = get_channel_layer()
    if hasattr(layer, "flush"):
        async_to_sync(layer.flush)()  # queues of the in-memory layer belong to the test's event loop


@pytest.fixture
def chat_socket():
    """``chat_socket(user=None, session_key=None)``: a communicator on /ws/chat/ as that user or session."""

    def make(user=None, session_key: str | None = None) -> WebsocketCommunicator:
        headers = list(HEADERS)
        if user is not None:
            client = Client()
            client.force_login(user)
            session_key = client.cookies["sessionid"].value
        if session_key:
            headers.append((b"cookie", f"sessionid={session_key}".encode()))
        return WebsocketCommunicator(application, "/ws/chat/", headers=headers)

    return make


def open_sessions(urls: list[str]) -> list[int]:
    """Each node's count of open inference sessions, as the node itself reports it."""
    counts = []
    for url in urls:
        span = RemoteSpan(url, timeout=5)
        try:
            counts.append(span.request(Info()).open_sessions)
        finally:
            span.close()
    return counts
