"""A decoder's node refuses ``forward.lengths`` (spec §4.4: padded rows are an encoder's), and still serves forwards.

(An encoder's node with real weights, its lengths and its refusals: ``tests/swarmnode/test_minilm_swarm.py``.)
"""

import numpy as np

from swarmnode.client import RemoteError, RemoteSpan
from swarmnode.protocol import Forward, ForwardResult, tensor_from_numpy


def test_a_decoder_node_refuses_lengths_and_carries_on(tiny_node):
    hidden = tensor_from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32))
    span = RemoteSpan(tiny_node.url, timeout=30)
    try:
        try:
            span.request(Forward(hidden=hidden, lengths=(3, 2)))
            raise AssertionError("lengths were accepted by a decoder's node")
        except RemoteError as err:
            assert err.code == "bad_field" and "encoder-only" in err.message
        reply = span.request(Forward(hidden=hidden))
        assert isinstance(reply, ForwardResult) and tuple(reply.hidden.shape) == (2, 3, 64)
    finally:
        span.close()
