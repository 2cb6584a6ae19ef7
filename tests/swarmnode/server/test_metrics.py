"""A node's Prometheus metrics on its own port (``GET /metrics``), and its JSON log lines.

One real node process (tiny model, ``--log-format json``): a peer opens a session, steps, sends garbage;
the scrape's counters move by exactly what happened, carry nothing of the session, and every line the node
logged is one JSON object.
"""

from __future__ import annotations

import json
import time
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.sync.client import connect

from swarmnode.launcher import start_node
from swarmnode.protocol import Error, OpenSession, SessionOpened, Step, StepResult, decode, encode, tensor_from_numpy
from swarmnode.server.metrics import MAX_ERROR_CODES, NodeMetrics

SECRET_SESSION = "secret-session-7f3a"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a node's /metrics."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, text


@pytest.fixture(scope="module")
def json_node(tiny_models, tmp_path_factory):
    log = tmp_path_factory.mktemp("metrics") / "node.log"
    node = start_node(
        str(tiny_models["llama"]),
        "0:6",
        extra_args=["--backend", "torch", "--cache-tokens", "1000", "--no-measure", "--log-format", "json"]
        + ["--idle-timeout", "4"],
        log_path=log,
    )
    node.log_path = log
    node.metrics_url = node.url.replace("ws://", "http://").split("/layerswarm")[0] + "/metrics"
    yield node
    node.stop()


def test_it_counts_steps_bytes_sessions_and_errors_without_leaking_the_session(json_node):
    before, _ = scrape(json_node.metrics_url)
    ws = connect(json_node.url, compression=None, max_size=None)
    frames = [encode(OpenSession(id=1, session_id=SECRET_SESSION, max_length=32))]
    assert isinstance(decode(_call(ws, frames[-1])), SessionOpened)
    sent = 0
    for i, (position, tokens) in enumerate(((0, 5), (5, 1), (6, 1))):
        hidden = tensor_from_numpy(np.random.default_rng(i).standard_normal((1, tokens, 64)).astype(np.float32))
        frames.append(encode(Step(id=2 + i, session_id=SECRET_SESSION, position=position, hidden=hidden)))
        reply = _call(ws, frames[-1])
        sent += len(reply)
        assert isinstance(decode(reply), StepResult)
    frames.append(b"\x93not msgpack of ours")
    assert decode(_call(ws, frames[-1])).code == "bad_frame"
    during, text = scrape(json_node.metrics_url)
    ws.close()

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return during.get(key, 0) - before.get(key, 0)

    assert moved("swarmnode_steps_total", kind="prefill") + moved("swarmnode_steps_total", kind="decode") == 3
    assert moved("swarmnode_step_tokens_total") == 7
    assert moved("swarmnode_batch_size_count") == 3
    assert moved("swarmnode_frames_total") == len(frames)
    assert moved("swarmnode_received_bytes_total") == sum(len(f) for f in frames)
    assert moved("swarmnode_sent_bytes_total") > sent  # step results plus the other replies
    assert moved("swarmnode_errors_total", code="bad_frame") == 1
    assert during[("swarmnode_sessions", ())] == 1
    assert during[("swarmnode_cache_tokens_used", ())] == 32  # rows x max_length reserved
    assert during[("swarmnode_cache_tokens_budget", ())] == 1000
    assert ("swarmnode_queue_depth", ()) in during
    assert during[("swarmnode_relay_links", (("role", "relayed_through"),))] == 0
    [info] = [dict(labels) for name, labels in during if name == "swarmnode_info"]
    assert (info["backend"], info["start_block"], info["end_block"], info["dtype"]) == ("torch", "0", "6", "float32")
    assert SECRET_SESSION not in text and "not msgpack" not in text


def test_it_writes_one_json_event_per_line_with_the_session_id(json_node):
    ws = connect(json_node.url, compression=None, max_size=None)
    assert isinstance(decode(_call(ws, encode(OpenSession(id=1, session_id="idle-one", max_length=8)))), SessionOpened)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the reaper evicts it after --idle-timeout 4 s, and says so
        events = [json.loads(line) for line in json_node.log_path.read_text().splitlines() if line.strip()]
        if any(e.get("session_id") == "idle-one" for e in events):
            break
        time.sleep(0.5)
    ws.close()
    [evicted] = [e for e in events if e.get("session_id") == "idle-one"]
    assert evicted["logger"] == "swarmnode.node" and "evicted idle session" in evicted["message"]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in events)


@pytest.mark.parametrize(("access", "status"), [("off", 404), ("loopback", 404), ("public", 200)])
def test_a_stranger_gets_the_unknown_path_answer_unless_metrics_are_public(access, status):
    stranger = SimpleNamespace(remote_address=("203.0.113.9", 5000), respond=ServerProtocol().reject)
    metrics = NodeMetrics(_fake_node(), access)
    response = metrics.respond(stranger, Request("/metrics?x=1", Headers()))
    assert response.status_code == status
    assert (b"swarmnode_sessions" in response.body) is (status == 200)
    assert metrics.respond(stranger, Request("/layerswarm/v1", Headers())) is None  # the websocket's own path


@pytest.mark.parametrize(
    ("access", "peer", "allowed"),
    [
        ("loopback", ("127.0.0.1", 5000), True),
        ("loopback", ("::1", 5000, 0, 0), True),
        ("loopback", ("::ffff:127.0.0.1", 5000, 0, 0), True),
        ("loopback", ("203.0.113.9", 5000), False),
        ("loopback", ("10.1.2.3", 5000), False),
        ("loopback", None, False),
        ("public", ("203.0.113.9", 5000), True),
        ("off", ("127.0.0.1", 5000), False),
    ],
)
def test_it_shows_metrics_only_to_the_peers_the_setting_allows(access, peer, allowed):
    metrics = NodeMetrics(_fake_node(), access)
    assert metrics.allowed(SimpleNamespace(remote_address=peer)) is allowed


def test_error_codes_stay_a_bounded_set_of_short_words():
    metrics = NodeMetrics(_fake_node())
    metrics.replied(Error(code="Robert'); DROP TABLE", message="x"), 10)
    for i in range(MAX_ERROR_CODES + 20):
        metrics.replied(Error(code=f"code_{i}", message="x"), 10)
    text = metrics.render().decode()
    assert "DROP" not in text
    codes = {
        line.split('code="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("swarmnode_errors_total{")
    }
    assert len(codes) == MAX_ERROR_CODES + 1 and "other" in codes and "bad_frame" in codes


def _call(ws, frame: bytes) -> bytes:
    ws.send(frame)
    return ws.recv(timeout=30)


def _fake_node():
    pool = SimpleNamespace(sessions={}, budget_tokens=100, tokens_left=100)
    return SimpleNamespace(
        pool=pool,
        scheduler=SimpleNamespace(queue_depth=0, on_batch=None),
        throughput=SimpleNamespace(decode=0.0),
        relay_link=None,
        relay_hub=None,
        model_name="m",
        start=0,
        end=1,
        backend=SimpleNamespace(name="torch"),
        device="cpu",
        precision="float32",
    )
