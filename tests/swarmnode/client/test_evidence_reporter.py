"""The evidence reporter posts with the API key; a refusal with a code is 'refused', not an error."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from swarmnode.client.audit import EvidenceReporter
from swarmnode.discovery import PeerInfo

ANSWERS = [(200, b'{"ok": true}'), (403, b'{"error": "no_dealings"}'), (500, b"<html>boom</html>"), (403, b"no")]


@pytest.fixture
def portal():
    seen: list[tuple[str, str, dict]] = []
    answers = list(ANSWERS)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body))
            status, raw = answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    server.server_close()


def test_it_sorts_the_portals_answers(portal):
    url, seen = portal
    reporter = EvidenceReporter(url, "lsk_key", timeout=5)
    peer = PeerInfo(url="ws://n:1/layerswarm/v1", model="m", start_block=0, end_block=1, num_blocks=1, node_id=4)
    for ok in range(len(ANSWERS)):
        reporter.steps(peer, ok, 0)
    reporter.flush(20)
    assert reporter.sent == 1
    assert reporter.refused == ["/api/v1/reputation/steps/: no_dealings"]
    assert len(reporter.errors) == 2  # a 500, and a 403 that names no code
    assert [(p, a, b["ok"]) for p, a, b in seen] == [
        ("/api/v1/reputation/steps/", "Bearer lsk_key", n) for n in range(4)
    ]
