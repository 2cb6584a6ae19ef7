"""What one stranger may take of a node (spec §6.5): connections per address, sessions per connection,
a share of the KV budget per connection. Refusals are error replies; other clients are still served."""

import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from swarmnode.launcher import start_node
from swarmnode.protocol import (
    CloseSession,
    Error,
    Forward,
    ForwardResult,
    Info,
    InfoReply,
    OpenSession,
    SessionClosed,
    SessionOpened,
    Step,
    StepResult,
    decode,
    encode,
    tensor_from_numpy,
)


@pytest.fixture(scope="module")
def capped_node(tiny_models, tmp_path_factory):
    node = start_node(
        str(tiny_models["llama"]),
        "0:6",
        extra_args=[
            "--backend",
            "torch",
            "--no-measure",
            "--relay",
            "never",
            "--cache-tokens",
            "1000",
            "--max-connections-per-ip",
            "3",
            "--max-sessions-per-connection",
            "4",
            "--connection-cache-share",
            "0.4",
            "--max-forward-tokens",
            "64",
        ],
        log_path=tmp_path_factory.mktemp("caps") / "node.log",
    )
    yield node
    node.process.kill()
    node.process.wait()


class Peer:
    def __init__(self, url):
        self.ws = connect(url, compression=None, max_size=None)

    def ask(self, msg):
        self.ws.send(encode(msg))
        return decode(self.ws.recv(timeout=60))

    def close(self):
        self.ws.close()


def _error(reply, code):
    assert isinstance(reply, Error) and reply.code == code, reply
    return reply


def test_one_client_cannot_take_the_whole_node(capped_node):
    attacker = [Peer(capped_node.url), Peer(capped_node.url)]
    # Sessions per connection: the fifth is refused, clearly.
    for i in range(4):
        assert isinstance(attacker[0].ask(OpenSession(id=i, session_id=f"s{i}", max_length=8)), SessionOpened)
    reply = _error(attacker[0].ask(OpenSession(id=9, session_id="s9", max_length=8)), "too_many_sessions")
    assert "4 open sessions" in reply.message
    # A share of the cache per connection (0.4 x 1000): a first big session fits, more does not.
    assert isinstance(attacker[1].ask(OpenSession(id=1, session_id="big", max_length=380)), SessionOpened)
    reply = _error(attacker[1].ask(OpenSession(id=2, session_id="big2", max_length=380)), "out_of_cache")
    assert "one connection may use" in reply.message
    # Another client is still served: it opens a session and steps.
    victim = Peer(capped_node.url)
    assert isinstance(victim.ask(OpenSession(id=1, session_id="victim", max_length=300)), SessionOpened)
    x = tensor_from_numpy(np.ones((1, 2, 64), np.float32))
    assert isinstance(victim.ask(Step(id=2, session_id="victim", position=0, hidden=x)), StepResult)
    # Connections per address: the fourth from this address gets an error frame and is closed.
    extra = connect(capped_node.url, compression=None, max_size=None)
    _error(decode(extra.recv(timeout=30)), "too_many_connections")
    extra.close()
    # Once the attacker leaves, its connections and cache are free again.
    for peer in attacker:
        peer.close()
    reply = None
    for _ in range(50):  # the node learns of closed connections asynchronously
        again = Peer(capped_node.url)
        try:
            reply = again.ask(OpenSession(id=1, session_id="after", max_length=380))
        except ConnectionClosed:  # refused before our request was read: still too many
            pass
        finally:
            again.close()
        if isinstance(reply, SessionOpened):
            break
        time.sleep(0.1)
    assert isinstance(reply, SessionOpened), reply
    victim.close()


def test_a_forward_costs_at_most_max_forward_tokens(capped_node):
    """A cache-less forward holds no cache, but its compute is bounded too: rows x positions."""
    peer = Peer(capped_node.url)
    try:
        big = tensor_from_numpy(np.ones((2, 40, 64), np.float32))  # 80 > 64
        assert "split it" in _error(peer.ask(Forward(id=1, hidden=big)), "too_many_tokens").message
        small = tensor_from_numpy(np.ones((1, 40, 64), np.float32))
        assert isinstance(peer.ask(Forward(id=2, hidden=small)), ForwardResult)
    finally:
        peer.close()


def _peer_when_free(url):
    """A connection, once the node has let go of earlier tests' ones (it learns of closes asynchronously)."""
    for _ in range(50):
        peer = Peer(url)
        try:
            if isinstance(peer.ask(Info(id=0)), InfoReply):
                return peer
        except ConnectionClosed:
            pass
        peer.close()
        time.sleep(0.1)
    raise AssertionError("the node kept refusing connections")


def _rows(b, t=1):
    return tensor_from_numpy(np.ones((b, t, 64), np.float32))


def test_a_many_row_session_costs_rows_times_its_length(capped_node):
    """Each row of a session's cache holds max_length positions: a 64-row first step of a 100-token session needs
    6400 tokens of a 1000-token budget. Counting max_length alone let one connection hold 64 times its share."""
    attacker = _peer_when_free(capped_node.url)
    victim = _peer_when_free(capped_node.url)
    try:
        for _ in range(50):  # earlier tests' sessions are freed when the node sees their connections close
            if attacker.ask(Info(id=1)).cache_tokens_left == 1000:
                break
            time.sleep(0.1)
        left = 1000
        assert isinstance(attacker.ask(OpenSession(id=2, session_id="wide", max_length=100)), SessionOpened)
        reply = _error(attacker.ask(Step(id=3, session_id="wide", position=0, hidden=_rows(64))), "out_of_cache")
        assert "6400 cache tokens (64 rows)" in reply.message
        # Refused before anything ran: the session still holds one row, at position 0.
        assert attacker.ask(Info(id=4)).cache_tokens_left == left - 100
        # Within the budget but past the connection's share (0.4 x 1000) once another session is held.
        assert isinstance(attacker.ask(Step(id=5, session_id="wide", position=0, hidden=_rows(2))), StepResult)
        assert attacker.ask(Info(id=6)).cache_tokens_left == left - 200
        assert isinstance(attacker.ask(OpenSession(id=7, session_id="wide2", max_length=100)), SessionOpened)
        reply = _error(attacker.ask(Step(id=8, session_id="wide2", position=0, hidden=_rows(3))), "out_of_cache")
        assert "one connection may use" in reply.message
        # A session's rows are fixed by its first step: more rows later are refused, not run into a crash.
        reply = _error(attacker.ask(Step(id=9, session_id="wide", position=1, hidden=_rows(8))), "bad_shape")
        assert "set by its first step" in reply.message
        # Another client is still served, rows and all.
        assert isinstance(victim.ask(OpenSession(id=1, session_id="v", max_length=100)), SessionOpened)
        assert isinstance(victim.ask(Step(id=2, session_id="v", position=0, hidden=_rows(3, 2))), StepResult)
        for peer, sid in ((attacker, "wide"), (attacker, "wide2"), (victim, "v")):
            assert isinstance(peer.ask(CloseSession(id=10, session_id=sid)), SessionClosed)
        assert victim.ask(Info(id=11)).cache_tokens_left == left
    finally:
        attacker.close()
        victim.close()
