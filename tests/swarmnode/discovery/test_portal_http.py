"""JSON calls to a portal are bounded in size and time, whatever answers at its address."""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from swarmnode.discovery.portal_http import PortalHTTPError, call_json
from swarmnode.discovery.tracker import TrackerError, fetch_spans


class Portal:
    """A loopback HTTP server answering every request with ``self.answer(handler)``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, bytes]] = []  # (method, path, authorization, body)
        self.answer = lambda h: send(h, 200, b"{}")
        portal = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                portal.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
                portal.answer(self)

            do_GET = do_POST = handle_any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def send(handler, status: int, body: bytes, **headers) -> None:
    handler.send_response(status)
    headers.setdefault("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def portal():
    p = Portal()
    yield p
    p.server.shutdown()
    p.server.server_close()


def test_it_posts_json_with_the_token_and_returns_the_answer(portal):
    portal.answer = lambda h: send(h, 201, b'{"id": 7}')
    assert call_json("POST", portal.url + "/x/", token="lsn_t", body={"a": 1}, timeout=5) == {"id": 7}
    method, path, auth, body = portal.seen[0]
    assert (method, path, auth, json.loads(body)) == ("POST", "/x/", "Bearer lsn_t", {"a": 1})


def test_it_reports_the_status_detail_code_and_retry_after(portal):
    payload = b'{"error": "no_dealings", "detail": "no receipts"}'
    portal.answer = lambda h: send(h, 403, payload, Retry_After="99999")
    with pytest.raises(PortalHTTPError) as refused:
        call_json("POST", portal.url, token="t", body={}, timeout=5)
    err = refused.value
    assert (err.status, err.code, err.detail, err.retry_after) == (403, "no_dealings", "no receipts", 3600.0)


def test_it_refuses_a_reply_larger_than_the_cap(portal):
    portal.answer = lambda h: send(h, 200, b'{"a": "' + b"x" * 5000 + b'"}')
    with pytest.raises(ValueError, match="exceeds 1000"):
        call_json("GET", portal.url, timeout=5, max_bytes=1000)


def test_it_refuses_a_compressed_reply_that_inflates_past_the_cap(portal):
    bomb = gzip.compress(b" " * 2_000_000)  # ~2 KB on the wire, 2 MB inflated
    portal.answer = lambda h: send(h, 200, bomb, Content_Encoding="gzip")
    with pytest.raises(ValueError, match="exceeds"):
        call_json("GET", portal.url, timeout=5, max_bytes=100_000)


def test_it_gives_up_on_a_reply_that_drips_past_its_deadline(portal):
    def drip(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(100):
            h.wfile.write(b" " * 10)
            h.wfile.flush()
            time.sleep(0.1)

    portal.answer = drip
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        call_json("GET", portal.url, timeout=1.0)  # no single read waits 1 s; the whole reply would take 10 s
    assert time.monotonic() - started < 5


def test_a_request_with_a_token_never_follows_a_redirect(portal):
    portal.answer = lambda h: send(h, 302, b"", Location="http://127.0.0.1:9/steal/")
    with pytest.raises(PortalHTTPError) as refused:
        call_json("POST", portal.url, token="lsn_secret", body={}, timeout=5)
    assert refused.value.status == 302 and len(portal.seen) == 1


def test_broken_exchanges_are_os_errors(portal):
    def garbage(h):
        h.wfile.write(b"SURPRISE\r\n\r\n")

    portal.answer = garbage
    with pytest.raises(ConnectionError):
        call_json("POST", portal.url, token="t", body={}, timeout=5)
    portal.answer = lambda h: send(h, 200, b"<html>")
    with pytest.raises(ValueError):
        call_json("GET", portal.url, timeout=5)


def test_the_tracker_reads_spans_and_names_an_unknown_model(portal):
    span = {"url": "ws://10.1.2.3:7000/layerswarm/v1", "model": "smollm2", "start_block": 0, "end_block": 30}
    span |= {"num_blocks": 30, "hidden_size": 576, "dtype": "float32", "cache_tokens_left": 9, "max_session_length": 9}
    portal.answer = lambda h: send(h, 200, json.dumps({"spans": [span]}).encode())
    (peer,) = fetch_spans(portal.url, "smollm2", timeout=5)
    assert (peer.url, peer.end_block) == (span["url"], 30)
    assert portal.seen[-1][:3] == ("GET", "/api/v1/models/smollm2/spans/", None)
    portal.answer = lambda h: send(h, 404, b'{"detail": "no"}')
    with pytest.raises(TrackerError, match="does not know"):
        fetch_spans(portal.url, "nope", timeout=5)


def test_the_tls_context_is_built_once_not_for_every_exchange(portal, monkeypatch):
    import ssl

    from swarmnode.discovery import portal_http

    loads = []  # CA bundles loaded and parsed: the expensive part of a TLS context
    real = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda *a, **k: loads.append(1) or real(*a, **k))
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent-for-this-test")  # a CA setting of its own: a fresh entry
    for _ in range(5):
        assert call_json("GET", portal.url + "/x/", timeout=5) == {}
    assert len(loads) == 1
    assert portal_http.tls_context().verify_mode == ssl.CERT_REQUIRED
