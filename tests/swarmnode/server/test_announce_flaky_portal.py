"""#17 finding 16: a portal that resets, truncates or answers garbage never kills a node's background tasks,
and receipts a killed node had not delivered are sent after it restarts (the outbox is an SQLite file)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from swarmnode.protocol import InfoReply
from swarmnode.server.announce import Announcer
from swarmnode.server.receipt_store import ReceiptStore
from swarmnode.server.receipts import ReceiptOutbox
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import SignedReceipt, UsageReceipt, key_of

# What a broken portal (or whatever answers at its address) does, one per request, before it recovers.
TROUBLE = ["reset", "bad_status_line", "truncated", "not_json", "json_list", "json_string", "server_error"]


class FlakyPortal:
    """A loopback HTTP server that misbehaves as ``TROUBLE`` says, then answers like the portal."""

    def __init__(self, trouble: list[str]) -> None:
        self.trouble = list(trouble)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (behaviour, path)
        self.receipts: list[str] = []  # ids of the receipts it stored
        self.key_proofs: list = []  # what registrations sent as key_proof
        portal = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with portal.lock:
                    mode = portal.trouble.pop(0) if portal.trouble else "ok"
                    portal.requests.append((mode, self.path))
                portal.answer(self, mode, json.loads(body or b"{}"))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler, mode: str, body: dict) -> None:
        if mode == "reset":  # RST instead of an answer
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            return
        if mode == "bad_status_line":
            handler.wfile.write(b"SURPRISE\r\n\r\n")
            return
        if mode == "truncated":
            handler.send_response(200)
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            handler.wfile.write(b'{"id": 1')
            handler.close_connection = True
            return
        raw = {"not_json": b"<html>oops</html>", "json_list": b"[1, 2]", "json_string": b'"online"'}.get(mode)
        status = 500 if mode == "server_error" else 200
        if raw is None and status == 200:
            raw = json.dumps(self.reply(handler.path, body)).encode()
        raw = raw or b'{"detail": "boom"}'
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    def reply(self, path: str, body: dict) -> dict:
        if path.endswith("/key-challenge/"):
            return {"nonce": "n0nce"}
        if path.endswith("/register/"):
            self.key_proofs.append(body.get("key_proof"))
            return {"id": 7, "state": "joining", "heartbeat_interval": 0.1}
        if path.endswith("/heartbeat/"):
            return {"id": 7, "state": "online", "heartbeat_interval": 0.1}
        if path.endswith("/receipts/"):
            with self.lock:
                self.receipts.append(SignedReceipt.from_json(body).receipt.receipt_id)
            return {"status": "pending"}
        return {}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky_portal():
    portals: list[FlakyPortal] = []

    def make(trouble=TROUBLE) -> FlakyPortal:
        portals.append(FlakyPortal(trouble))
        return portals[-1]

    yield make
    for portal in portals:
        portal.close()


class _Node:
    """The parts of a node the announcer reads, with a real identity key."""

    def __init__(self) -> None:
        self.url = "ws://127.0.0.1:1/layerswarm/v1"
        self.hidden_size = 8
        self.identity = NodeIdentity.generate()

    def info(self) -> InfoReply:
        return InfoReply(
            model="smollm2", start_block=0, end_block=10, backend="torch", device="cpu", dtype="float32",
            cache_tokens_left=100, max_session_length=8192, version="0.1.0", open_sessions=0,
            throughput=5.0, public_key=self.identity.public_key,
        )  # fmt: skip


async def _until(check, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_it_keeps_announcing_through_resets_and_garbage_until_the_portal_recovers(flaky_portal):
    portal = flaky_portal()
    announcer = Announcer(_Node(), portal.url, "lsn_x", timeout=2.0, max_backoff=0.05)

    async def scenario():
        task = asyncio.create_task(announcer.run())
        try:
            await _until(lambda: announcer.state == "online" or task.done())
            assert not task.done(), task
            beats = sum(path.endswith("/heartbeat/") for _, path in portal.requests)
            portal.trouble.extend(TROUBLE)  # trouble again, this time while heartbeating
            await _until(
                lambda: sum(path.endswith("/heartbeat/") for _, path in portal.requests) > beats + 3 or task.done()
            )
            assert not task.done(), task
        finally:
            task.cancel()

    asyncio.run(scenario())
    seen = {mode for mode, _ in portal.requests}
    assert set(TROUBLE) <= seen and announcer.node_id == 7
    assert all(proof["nonce"] == "n0nce" and proof["signature"] for proof in portal.key_proofs)  # it proved its key


def _receipt(client: NodeIdentity, node: NodeIdentity, tokens: int = 3) -> SignedReceipt:
    r = UsageReceipt.new(
        session_id="s", model="smollm2", start_block=0, end_block=10, tokens=tokens,
        client_key=key_of(client), node_key=key_of(node),
    )  # fmt: skip
    return SignedReceipt(r, r.sign_as_client(client), r.sign_as_node(node))


def _posted_ids(portal: FlakyPortal) -> set[str]:
    return set(portal.receipts)


def test_it_keeps_sending_receipts_through_resets_and_garbage(flaky_portal, tmp_path):
    portal = flaky_portal(TROUBLE * 2)
    client, node = NodeIdentity.generate(), NodeIdentity.generate()
    receipts = [_receipt(client, node, tokens) for tokens in (1, 2, 3)]

    async def scenario():
        outbox = ReceiptOutbox(portal.url, "lsn_x", timeout=2.0, max_backoff=0.05, path=tmp_path / "outbox.sqlite3")
        outbox._sleep = lambda s: asyncio.sleep(min(s, 0.05))  # the portal's Retry-After, shortened for the test
        outbox.start()
        for signed in receipts:
            outbox.put(signed)
        await _until(lambda: outbox.pending == 0 or outbox._task.done())
        assert not outbox._task.done(), outbox._task
        await outbox.close(flush_timeout=0)

    asyncio.run(scenario())
    assert set(TROUBLE) <= {mode for mode, _ in portal.requests}
    assert {s.receipt.receipt_id for s in receipts} <= _posted_ids(portal)
    assert len(ReceiptStore(tmp_path / "outbox.sqlite3")) == 0  # acknowledged receipts are gone from the file


_KILLED_NODE = textwrap.dedent(
    """
    import asyncio, sys
    from swarmnode.server.receipts import ReceiptOutbox
    from swarmnode.trust.identity import NodeIdentity
    from swarmnode.trust.receipts import SignedReceipt, UsageReceipt, key_of

    async def main():
        outbox = ReceiptOutbox(sys.argv[1], "lsn_x", timeout=1.0, path=sys.argv[2])
        outbox.start()
        client, node = NodeIdentity.generate(), NodeIdentity.generate()
        for tokens in (4, 5, 6):
            r = UsageReceipt.new(session_id="s", model="smollm2", start_block=0, end_block=10, tokens=tokens,
                                 client_key=key_of(client), node_key=key_of(node))
            outbox.put(SignedReceipt(r, r.sign_as_client(client), r.sign_as_node(node)))
            print(r.receipt_id, flush=True)
        print("countersigned", flush=True)
        await asyncio.sleep(3600)  # the portal is down: the receipts wait, until SIGKILL

    asyncio.run(main())
    """
)


def test_a_node_killed_with_receipts_pending_sends_them_after_it_restarts(flaky_portal, tmp_path):
    path = tmp_path / "receipts" / "outbox.sqlite3"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once the socket closes
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_NODE, down, str(path)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        lines = [proc.stdout.readline().strip() for _ in range(4)]
        assert lines[-1] == "countersigned", lines
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    pending = set(lines[:3])

    portal = flaky_portal(["reset"])  # the portal is back (after one more hiccup)

    async def restarted():
        outbox = ReceiptOutbox(portal.url, "lsn_x", timeout=2.0, max_backoff=0.05, path=path)
        assert outbox.pending == 3
        outbox.start()
        await _until(lambda: outbox.pending == 0)
        await outbox.close(flush_timeout=0)

    asyncio.run(restarted())
    assert _posted_ids(portal) == pending
