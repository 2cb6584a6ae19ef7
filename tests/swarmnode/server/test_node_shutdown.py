"""A node process stops soon after SIGTERM even when its portal has stopped answering."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from swarmnode.launcher import start_node
from swarmnode.server.announce import REGISTER_PATH
from swarmnode.server.node import SHUTDOWN_GRACE_S
from swarmnode.testing.polling import wait_until


class _SilentPortal(BaseHTTPRequestHandler):
    """Registers a node, then takes every other request (heartbeats, the goodbye) and never answers."""

    heartbeats = 0
    release = threading.Event()

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == REGISTER_PATH:
            body = json.dumps({"id": 7, "heartbeat_interval": 0.2}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        type(self).heartbeats += 1
        self.release.wait(60)

    def log_message(self, *args):
        pass


def test_sigterm_ends_a_node_whose_portal_went_silent(tmp_path, tiny_models):
    """A heartbeat is stuck in flight (10 s timeout) and the goodbye would hang too: the node still
    leaves within its grace period instead of waiting for the portal."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SilentPortal)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    portal = f"http://127.0.0.1:{server.server_address[1]}"
    args = ["--backend", "torch", "--no-measure", "--relay", "never", "--portal", portal, "--token", "lsn_a_b"]
    node = start_node(str(tiny_models["llama"]), "0:2", extra_args=args, log_path=tmp_path / "node.log")
    try:
        wait_until(lambda: _SilentPortal.heartbeats >= 1, 60, "a heartbeat in flight")
        started = time.monotonic()
        node.process.terminate()
        assert node.process.wait(30) == 0
        took = time.monotonic() - started
    finally:
        if node.process.poll() is None:
            node.process.kill()
        _SilentPortal.release.set()
        server.shutdown()
    assert took < SHUTDOWN_GRACE_S + 2, f"took {took:.1f} s to stop; log:\n{(tmp_path / 'node.log').read_text()}"
