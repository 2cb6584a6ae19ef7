"""The blocking websocket client against a real ``websockets`` server: messages, fragments, timeouts,
keepalive pings while idle, refusals and closes."""

import asyncio
import threading
import time
from http import HTTPStatus

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidHandshake

from swarmnode.client import wsclient
from swarmnode.client.wsclient import BlockingWebSocket, ConnectionLost


class Server:
    """A websockets server on its own thread: echoes binary messages, answers text commands."""

    def __init__(self, **options) -> None:
        self.pings_answered = 0
        self.closed = threading.Event()
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()

        async def handler(ws):
            try:
                async for msg in ws:
                    if msg == "fragments":
                        await ws.send([b"ab", b"cd", b"ef"])  # one message in three frames
                    elif msg == "two":
                        await ws.send(b"first")
                        await ws.send(b"second")
                    elif msg == "bye":
                        await ws.close()
                    elif isinstance(msg, bytes) and msg.startswith(b"later:"):
                        await asyncio.sleep(float(msg[6:]))
                        await ws.send(b"late")
                    else:
                        await ws.send(msg)
            finally:
                self.closed.set()

        def refuse(connection, request):
            if request.path == "/nope":
                return connection.respond(HTTPStatus.NOT_FOUND, "no such place\n")
            return None

        async def main():
            async with serve(handler, "127.0.0.1", 0, process_request=refuse, **options) as server:
                self.url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"
                ready.set()
                await asyncio.Future()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        assert ready.wait(10)


@pytest.fixture(scope="module")
def server():
    return Server(max_size=None)


@pytest.fixture
def ws(server):
    conn = BlockingWebSocket(server.url)
    yield conn
    conn.close()


def command(ws: BlockingWebSocket, text: bytes) -> None:
    """Send a text message (the client itself only sends binary ones)."""
    ws._protocol.send_text(text)
    ws._flush()


def test_it_sends_and_receives_whole_messages(ws):
    big = bytes(range(256)) * 40_000  # 10 MB: many reads
    ws.send(big)
    assert ws.recv(10) == big
    ws.send(b"fragments")  # bytes, echoed
    assert ws.recv(5) == b"fragments"


def test_it_reassembles_fragmented_messages_and_keeps_queued_ones(ws):
    command(ws, b"fragments")
    assert ws.recv(5) == b"abcdef"
    command(ws, b"two")
    assert ws.recv(5) == b"first"
    assert ws.recv(5) == b"second"


def test_it_times_out_and_then_still_gets_the_late_message(ws):
    ws.send(b"later:0.3")
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        ws.recv(0.05)
    assert time.monotonic() - began < 0.25
    with pytest.raises(TimeoutError):
        ws.recv(0)  # only what is there already
    assert ws.recv(5) == b"late"


def test_it_reports_a_closed_connection(ws):
    command(ws, b"bye")
    with pytest.raises(ConnectionLost):
        ws.recv(5)
    assert ws.closed
    with pytest.raises(ConnectionLost):
        ws.send(b"x")


def test_closing_it_ends_the_connection_on_the_server(server):
    server.closed.clear()
    ws = BlockingWebSocket(server.url)
    ws.close()
    assert server.closed.wait(5)


def test_a_refused_handshake_or_a_dead_port_raises():
    refusing = Server()
    with pytest.raises(InvalidHandshake):
        BlockingWebSocket(refusing.url + "/nope")
    with pytest.raises(OSError):
        BlockingWebSocket("ws://127.0.0.1:9", open_timeout=2)


def test_an_idle_connection_answers_the_servers_pings(monkeypatch):
    """Nobody reads between requests; the keepalive thread answers pings, so the server keeps it."""
    monkeypatch.setattr(wsclient._KeepAlive, "interval_s", 0.05)
    strict = Server(ping_interval=0.1, ping_timeout=0.3)
    ws = BlockingWebSocket(strict.url)
    try:
        time.sleep(1.5)  # five ping timeouts
        ws.send(b"still here?")
        assert ws.recv(5) == b"still here?"
        assert not strict.closed.is_set()
    finally:
        ws.close()
