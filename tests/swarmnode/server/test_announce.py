"""The announcer never takes the node down: an unreachable or refusing portal only means retries."""

import asyncio
import socket

from swarmnode.protocol import InfoReply
from swarmnode.server.announce import Announcer, PortalRejected, post_json
from swarmnode.trust.identity import NodeIdentity


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket closes


class _FakeNode:
    """The parts of a Node the announcer reads."""

    def __init__(self):
        self.url = "ws://127.0.0.1:1/layerswarm/v1"
        self.hidden_size = 8
        self.info_calls = 0
        self.identity = NodeIdentity.generate()  # signs the portal's key challenge at registration

    def info(self):
        self.info_calls += 1
        return InfoReply(
            model="smollm2",
            start_block=0,
            end_block=10,
            backend="torch",
            device="cpu",
            dtype="float32",
            cache_tokens_left=100,
            max_session_length=8192,
            version="0.1.0",
            open_sessions=0,
            public_key=self.identity.public_key,
        )


def test_it_keeps_retrying_while_the_portal_is_down():
    node = _FakeNode()
    announcer = Announcer(node, f"http://127.0.0.1:{_closed_port()}", "lsn_x", timeout=0.5, max_backoff=0.1)

    async def run_a_while():
        try:
            await asyncio.wait_for(announcer.run(), timeout=1.5)
        except TimeoutError:
            return "still running"

    assert asyncio.run(run_a_while()) == "still running"
    assert node.info_calls >= 3  # one registration attempt per retry
    assert announcer.node_id is None


def test_it_builds_the_registration_from_node_info():
    body = Announcer(_FakeNode(), "http://portal", "lsn_x").registration()
    assert body["url"] == "ws://127.0.0.1:1/layerswarm/v1" and body["relay"] is False
    assert (body["model"], body["start_block"], body["end_block"]) == ("smollm2", 0, 10)


def test_it_reports_http_errors_with_their_status():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self):
            body = b'{"error": "overlapping_span", "detail": "this token already serves blocks 0:10"}'
            self.send_response(409)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        post_json(f"http://127.0.0.1:{server.server_port}/api/v1/nodes/register/", "lsn_x", {}, timeout=5)
    except PortalRejected as exc:
        assert exc.status == 409 and "already serves" in exc.detail
    else:
        raise AssertionError("expected PortalRejected")
    finally:
        server.shutdown()
