"""The sessions bench's reading of the batches nodes formed (jobs per compute pass, from ``GET /metrics``)."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from swarmnode.bench.sessions import batch_totals, mean_batch, node_batch_totals
from swarmnode.server.metrics import BATCH_BUCKETS


def scrape(*batches: int) -> str:
    """A node's scrape after passes of ``batches`` jobs each (the same histogram the node keeps)."""
    registry = CollectorRegistry()
    hist = Histogram("swarmnode_batch_size", "Jobs per compute pass", buckets=BATCH_BUCKETS, registry=registry)
    other = Histogram("swarmnode_step_seconds", "Step time", registry=registry)
    for n in batches:
        hist.observe(n)
        other.observe(0.5)
    return generate_latest(registry).decode()


def test_it_reads_jobs_and_passes_from_a_nodes_scrape():
    assert batch_totals(scrape(8, 8, 3)) == (19.0, 3.0)


@pytest.mark.parametrize("text", ["", "garbage\n\x00", "swarmnode_batch_size_sum not-a-number\n", scrape()])
def test_a_scrape_without_batches_reads_as_none(text):
    assert batch_totals(text) == (0.0, 0.0)


def test_mean_batch_is_jobs_per_pass_between_two_readings_per_node():
    before = [(10.0, 5.0), (4.0, 4.0)]
    after = [(10.0 + 24, 5.0 + 4), (4.0, 4.0)]  # the second node ran nothing meanwhile
    assert mean_batch(before, after) == [6.0, 0.0]


class Scrapes(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path != "/metrics":
            self.send_error(404)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scrapes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_it_reads_a_node_over_http_from_its_websocket_url(metrics_server):
    Scrapes.body = scrape(16, 16, 12).encode()
    port = metrics_server.server_address[1]
    assert node_batch_totals(f"ws://127.0.0.1:{port}/swarm") == (44.0, 3.0)


def test_a_node_that_refuses_its_metrics_reads_as_none(metrics_server):
    Scrapes.body = b""
    metrics_server.RequestHandlerClass = type("Refuses", (Scrapes,), {"do_GET": lambda self: self.send_error(404)})
    port = metrics_server.server_address[1]
    assert node_batch_totals(f"ws://127.0.0.1:{port}/swarm", timeout=5) == (0.0, 0.0)
