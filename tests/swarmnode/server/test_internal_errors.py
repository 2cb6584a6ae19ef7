"""Spec §5: a failure inside a node reaches peers as a bare ``internal`` code; the details stay in its log.

No peer input is known to make a node fail inside (that would be a bug of its own), so these tests
make the node's dispatch fail with an exception whose text holds what an attacker would like to
read (paths, library versions), and send the frame a peer would send.
"""

import asyncio
import logging

import numpy as np

from swarmnode.protocol import Error, OpenSession, Step, decode, encode, tensor_from_numpy
from swarmnode.runtime import CachePool
from swarmnode.server.config import NodeConfig
from swarmnode.server.node import INTERNAL_MESSAGE, Node
from swarmnode.server.push import PushRelay

SECRET = "/home/operator/.cache/layerswarm/model.safetensors: torch 2.5.1+cu124 CUDA error"


class _Owner:
    def __init__(self):
        self.sent = []

    async def send(self, frame):
        self.sent.append(decode(frame))


def _failing_node():
    node = Node.__new__(Node)  # no model: only the request path is under test
    node.config = NodeConfig()
    node.limits = node.config.limits
    node.pool = CachePool(1000)
    node.url, node.relay_link = "ws://127.0.0.1:1/layerswarm/v1", None

    async def dispatch(msg, owner):
        raise RuntimeError(SECRET)

    node.dispatch = dispatch
    node.push = PushRelay(node)
    return node


def test_a_peer_learns_only_the_code_of_an_internal_failure(caplog):
    node = _failing_node()
    node.pool.open("s", 8, None, object())
    frame = encode(Step(id=4, session_id="s", position=0, hidden=tensor_from_numpy(np.ones((1, 1, 8), np.float32))))
    with caplog.at_level(logging.ERROR, logger="swarmnode.node"):
        reply = asyncio.run(node.handle_frame(frame, object()))
    assert isinstance(reply, Error) and reply.code == "internal" and reply.id == 4
    assert reply.message == INTERNAL_MESSAGE and SECRET not in encode(reply).decode("latin-1")
    assert SECRET in caplog.text  # the operator still sees it
    assert "s" not in node.pool.sessions  # its cache is suspect: closed


def test_a_pushed_step_that_fails_inside_tells_the_owner_only_the_code(caplog):
    node = _failing_node()
    owner = _Owner()
    node.pool.open("p", 8, None, owner)
    node.push.register("p", "k" * 32, owner)
    step = Step(id=6, session_id="p", position=0, hidden=tensor_from_numpy(np.ones((1, 1, 8), np.float32)))
    with caplog.at_level(logging.ERROR, logger="swarmnode.push"):
        asyncio.run(node.push.run(step))
    (reply,) = owner.sent
    assert isinstance(reply, Error) and reply.code == "internal" and SECRET not in reply.message
    assert SECRET in caplog.text


def test_open_session_errors_still_say_what_was_wrong():
    """Refusals of a peer's own request keep their precise message (they are not internal)."""
    node = _failing_node()

    async def refuse(msg, owner):
        from swarmnode.protocol import ProtocolError

        raise ProtocolError("bad_field", "max_length 9999 exceeds this node's 512")

    node.dispatch = refuse
    reply = asyncio.run(node.handle_frame(encode(OpenSession(id=1, session_id="x", max_length=9999)), object()))
    assert reply.code == "bad_field" and "9999" in reply.message
