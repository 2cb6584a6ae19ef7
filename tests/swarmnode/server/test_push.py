"""Server-to-server push on a real node (spec §7): key checks, delivery to the session's owner, errors."""

import numpy as np
import pytest
from websockets.sync.client import connect

from swarmnode.protocol import Error, OpenSession, SessionOpened, Step, StepResult, decode, encode, tensor_from_numpy

KEY = "k" * 32


class Peer:
    def __init__(self, url):
        self.ws = connect(url, compression=None, max_size=None)

    def send(self, msg):
        self.ws.send(encode(msg))

    def recv(self, timeout=30.0):
        return decode(self.ws.recv(timeout=timeout))

    def close(self):
        self.ws.close()


def hidden(tokens=2):
    return tensor_from_numpy(np.random.default_rng(0).standard_normal((1, tokens, 64)).astype(np.float32))


@pytest.fixture
def owner(tiny_node):
    peer = Peer(tiny_node.url)
    yield peer
    peer.close()


def _open(peer, sid, key=KEY):
    peer.send(OpenSession(id=1, session_id=sid, max_length=16, push_key=key))
    assert isinstance(peer.recv(), SessionOpened)


def test_it_delivers_a_step_pushed_from_another_connection_to_the_owner(tiny_node, owner):
    """§7.2: the last node of a route sends the result to the connection that opened the session."""
    _open(owner, "push-1")
    upstream = Peer(tiny_node.url)  # another node forwarding a step
    upstream.send(Step(id=77, session_id="push-1", position=0, hidden=hidden(), push_key=KEY))
    reply = owner.recv()
    assert isinstance(reply, StepResult) and reply.id == 77 and reply.position == 2
    with pytest.raises(TimeoutError):
        upstream.ws.recv(timeout=0.3)  # §7.3: one-way, nothing comes back to the sender
    upstream.close()


def test_it_refuses_a_wrong_key_or_a_session_without_push(tiny_node, owner):
    """§7.1: only the key given at open_session lets steps in from other connections."""
    _open(owner, "push-2")
    _open(owner, "no-push", key="")
    stranger = Peer(tiny_node.url)
    stranger.send(Step(id=5, session_id="push-2", position=0, hidden=hidden(), push_key="x" * 32))
    assert stranger.recv().code == "unknown_session"
    stranger.send(Step(id=6, session_id="no-push", position=0, hidden=hidden(), push_key=KEY))
    assert stranger.recv().code == "unknown_session"
    stranger.close()
    owner.send(Step(id=7, session_id="push-2", position=0, hidden=hidden()))
    assert owner.recv().position == 2  # the session is untouched and still works


def test_it_reports_a_refused_next_hop_to_the_owner(tiny_node, owner):
    """§7.3 and §7.5: a next hop that is no node of the swarm is never dialled; ``push_refused`` names it
    and goes to the session's owner (``push_failed`` for a node that cannot be reached:
    tests/swarmnode/server/test_push_links.py)."""
    _open(owner, "push-3")
    dead = "ws://127.0.0.1:9/layerswarm/v1"
    owner.send(Step(id=9, session_id="push-3", position=0, hidden=hidden(), push_key=KEY, route=(dead,)))
    reply = owner.recv()
    assert isinstance(reply, Error) and reply.code == "push_refused" and reply.message.startswith(dead)
    assert reply.id == 9


def test_it_reports_a_bad_pushed_step_to_the_owner(tiny_node, owner):
    """§7.3 with §4.2: a wrong position in a pushed step is reported to the owner, not the sender."""
    _open(owner, "push-4")
    upstream = Peer(tiny_node.url)
    upstream.send(Step(id=11, session_id="push-4", position=5, hidden=hidden(), push_key=KEY))
    reply = owner.recv()
    assert isinstance(reply, Error) and reply.code == "bad_position" and reply.id == 11
    upstream.close()


def test_it_forwards_along_the_route_and_delivers_at_the_end(tiny_node, owner):
    """§7.2: a route through the same node twice still ends at the owner with both steps applied."""
    _open(owner, "push-5a")
    other = Peer(tiny_node.url)
    _open(other, "push-5b")
    # Two sessions on one node stand in for two nodes: forward from session a's node to "the next" node.
    owner.send(Step(id=3, session_id="push-5a", position=0, hidden=hidden(), push_key=KEY, route=(tiny_node.url,)))
    reply = owner.recv()  # the forwarded step runs push-5a again at position 0: bad_position, reported to us
    assert isinstance(reply, Error) and reply.code == "bad_position"
    other.close()


def test_steps_of_many_sessions_on_one_link_all_arrive_with_the_direct_results(tiny_node):
    """A push link carries every session's steps: they run side by side (not one after the other) and
    each session gets exactly what a direct step returns."""
    sessions = [f"push-many-{i}" for i in range(6)]
    owners = [Peer(tiny_node.url) for _ in sessions]
    direct = Peer(tiny_node.url)
    inputs = [
        tensor_from_numpy(np.random.default_rng(i).standard_normal((1, 2, 64)).astype(np.float32))
        for i in range(len(sessions))
    ]
    for peer, sid in zip(owners, sessions, strict=True):
        _open(peer, sid)
    expected = []
    for i, x in enumerate(inputs):
        direct.send(OpenSession(id=1, session_id=f"direct-{i}", max_length=16))
        assert isinstance(direct.recv(), SessionOpened)
        direct.send(Step(id=2, session_id=f"direct-{i}", position=0, hidden=x))
        expected.append(direct.recv().hidden.to_numpy())
    link = Peer(tiny_node.url)
    for i, (sid, x) in enumerate(zip(sessions, inputs, strict=True)):  # back to back, no waiting
        link.send(Step(id=100 + i, session_id=sid, position=0, hidden=x, push_key=KEY))
    for i, peer in enumerate(owners):
        reply = peer.recv()
        assert isinstance(reply, StepResult) and reply.id == 100 + i and reply.position == 2
        np.testing.assert_array_equal(reply.hidden.to_numpy(), expected[i])
    for peer in [*owners, direct, link]:
        peer.close()


def test_a_second_pushed_step_of_a_session_is_refused_not_interleaved(tiny_node, owner):
    """Pushed steps run concurrently, but never two of one session: the second is refused
    (``bad_position``) and the session goes on from the first."""
    _open(owner, "push-6")
    link = Peer(tiny_node.url)
    link.send(Step(id=21, session_id="push-6", position=0, hidden=hidden(), push_key=KEY))
    link.send(Step(id=22, session_id="push-6", position=0, hidden=hidden(), push_key=KEY))
    replies = {r.id: r for r in (owner.recv(), owner.recv())}
    assert isinstance(replies[21], StepResult) and replies[21].position == 2
    assert isinstance(replies[22], Error) and replies[22].code == "bad_position"
    owner.send(Step(id=23, session_id="push-6", position=2, hidden=hidden()))
    assert owner.recv().position == 4
    link.close()
