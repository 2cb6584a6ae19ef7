"""Nothing a peer sends crashes a node: each bad input gets a clear Error, other sessions carry on.

A real node process serves a tiny model; a good session runs alongside every bad request and
must finish with the same result as an undisturbed run.
"""

import time

import msgpack
import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from swarmnode.models import Checkpoint, load_span
from swarmnode.protocol import (
    CloseSession,
    Error,
    OpenSession,
    SessionClosed,
    SessionOpened,
    Step,
    StepResult,
    decode,
    encode,
    tensor_from_numpy,
)

H = 64  # hidden size of the tiny model


class Peer:
    """A raw protocol client that can send anything."""

    def __init__(self, url):
        self.ws = connect(url, compression=None, max_size=None)

    def send_raw(self, frame):
        self.ws.send(frame)
        return decode(self.ws.recv(timeout=30))

    def send(self, msg):
        return self.send_raw(encode(msg))

    def close(self):
        self.ws.close()


def hidden(tokens, seed=0, value=None):
    arr = np.random.default_rng(seed).standard_normal((1, tokens, H)).astype(np.float32)
    if value is not None:
        arr[0, 0, 0] = value
    return tensor_from_numpy(arr)


@pytest.fixture
def good(tiny_node):
    """A good session that steps before, during and after the bad input."""
    peer = Peer(tiny_node.url)
    assert isinstance(peer.send(OpenSession(id=1, session_id="good", max_length=20)), SessionOpened)
    first = peer.send(Step(id=3, session_id="good", position=0, hidden=hidden(4, seed=1)))
    assert isinstance(first, StepResult)
    yield peer
    last = peer.send(Step(id=4, session_id="good", position=4, hidden=hidden(1, seed=2)))
    assert isinstance(last, StepResult) and last.position == 5
    # Same numbers as computing the two steps locally with the same blocks.
    span = load_span(Checkpoint(tiny_node.ready_model_path), 0, 6)
    cache = span.new_cache()
    span(torch.from_numpy(hidden(4, seed=1).to_numpy().copy()), cache)
    expected = span(torch.from_numpy(hidden(1, seed=2).to_numpy().copy()), cache)
    np.testing.assert_allclose(last.hidden.to_numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    peer.close()


@pytest.fixture
def bad(tiny_node):
    peer = Peer(tiny_node.url)
    yield peer
    peer.close()


def assert_error(reply, code):
    assert isinstance(reply, Error), reply
    assert reply.code == code, reply
    assert reply.message


def test_it_answers_malformed_frames(good, bad):
    assert_error(bad.send_raw(b"\x93\x01"), "bad_frame")
    assert_error(bad.send_raw(b"garbage\xff"), "bad_frame")
    assert_error(bad.send_raw("a text frame"), "bad_frame")
    assert_error(
        bad.send_raw(msgpack.packb({"v": 1, "type": "step", "id": 1, "hidden": {"dtype": "pickle"}})), "bad_dtype"
    )


def test_it_answers_a_wrong_hidden_size(good, bad):
    bad.send(OpenSession(id=1, session_id="b1", max_length=20))
    arr = np.zeros((1, 1, H + 1), np.float32)
    assert_error(bad.send(Step(id=2, session_id="b1", position=0, hidden=tensor_from_numpy(arr))), "wrong_hidden_size")


def test_it_answers_nans_and_keeps_the_session_usable(good, bad):
    bad.send(OpenSession(id=1, session_id="b2", max_length=20))
    assert_error(bad.send(Step(id=2, session_id="b2", position=0, hidden=hidden(2, value=np.nan))), "not_finite")
    assert_error(bad.send(Step(id=3, session_id="b2", position=0, hidden=hidden(2, value=np.inf))), "not_finite")
    assert isinstance(bad.send(Step(id=4, session_id="b2", position=0, hidden=hidden(2))), StepResult)


def test_it_answers_oversized_messages(good, bad):
    # The node was started with --max-frame-bytes 200000; its websocket reads messages of up to that
    # plus 1 KiB (§6.3, a bigger one closes the connection: tests/swarmnode/server/test_frame_memory.py).
    big = tensor_from_numpy(np.zeros((1, 782, H), np.float32))  # 200.2 kB
    assert_error(bad.send(Step(id=1, session_id="x", position=0, hidden=big)), "frame_too_large")
    bad.send(OpenSession(id=2, session_id="big", max_length=400))
    assert_error(bad.send(Step(id=3, session_id="big", position=0, hidden=hidden(300))), "too_many_tokens")


def test_it_answers_unknown_sessions_and_steps_after_close(good, bad):
    assert_error(bad.send(Step(id=1, session_id="nope", position=0, hidden=hidden(1))), "unknown_session")
    bad.send(OpenSession(id=2, session_id="b3", max_length=20))
    assert isinstance(bad.send(CloseSession(id=3, session_id="b3")), SessionClosed)
    assert_error(bad.send(Step(id=4, session_id="b3", position=0, hidden=hidden(1))), "unknown_session")
    assert_error(bad.send(CloseSession(id=5, session_id="b3")), "unknown_session")


def test_it_keeps_other_connections_sessions_private(good, bad):
    assert_error(bad.send(Step(id=1, session_id="good", position=4, hidden=hidden(1))), "unknown_session")
    assert_error(bad.send(CloseSession(id=2, session_id="good")), "unknown_session")


def test_it_answers_positions_lengths_and_budget_errors(tiny_node, good, bad):
    bad.send(OpenSession(id=1, session_id="b4", max_length=3))
    assert_error(bad.send(Step(id=2, session_id="b4", position=5, hidden=hidden(1))), "bad_position")
    assert_error(bad.send(Step(id=3, session_id="b4", position=0, hidden=hidden(4))), "session_full")
    assert_error(bad.send(OpenSession(id=4, session_id="b4", max_length=3)), "session_exists")
    # The node's budget is 1000 tokens; 'good' sessions hold 21 of them, and one connection at most half (§6.5).
    assert isinstance(bad.send(OpenSession(id=5, session_id="fill", max_length=490)), SessionOpened)
    assert_error(bad.send(OpenSession(id=5, session_id="more", max_length=10)), "out_of_cache")  # its share
    other = Peer(tiny_node.url)
    try:
        assert_error(other.send(OpenSession(id=5, session_id="huge", max_length=500)), "out_of_cache")  # the node's
    finally:
        other.close()
    assert_error(bad.send(OpenSession(id=5, session_id="long", max_length=100_000)), "bad_field")
    assert_error(bad.send(OpenSession(id=6, session_id="", max_length=3)), "bad_field")


def test_it_answers_replies_sent_as_requests(good, bad):
    assert_error(bad.send(StepResult(id=1, session_id="good")), "unexpected_message")


def _open_soon(url, sid, length):
    # The node learns of a dropped connection asynchronously; give it a moment.
    deadline = time.monotonic() + 5
    while True:
        peer = Peer(url)
        reply = peer.send(OpenSession(id=1, session_id=sid, max_length=length))
        if isinstance(reply, SessionOpened) or time.monotonic() > deadline:
            return peer, reply
        peer.close()
        time.sleep(0.1)


def test_it_frees_the_cache_of_a_dropped_connection(tiny_node, good):
    for i in range(3):
        peer, reply = _open_soon(tiny_node.url, f"drop{i}", 490)
        assert isinstance(reply, SessionOpened), reply
        assert isinstance(peer.send(OpenSession(id=2, session_id=f"drop{i}b", max_length=10)), SessionOpened)
        second, reply = _open_soon(tiny_node.url, f"drop{i}c", 450)  # one connection holds at most half (§6.5)
        assert isinstance(reply, SessionOpened), reply
        peer.close()  # dropped without CloseSession: every session's cache must be freed
        second.close()
