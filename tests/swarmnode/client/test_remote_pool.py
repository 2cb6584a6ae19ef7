"""The pool of idle node connections: sessions reuse them, and a node that restarted gets a fresh one."""

import pytest
import torch

from swarmnode.client import AutoDistributedModelForCausalLM, RemoteSpan
from swarmnode.client.remote import POOL
from swarmnode.launcher import start_node
from swarmnode.protocol import Info

PROMPT = torch.tensor([[1, 504, 3290, 314, 2683, 30, 1012, 17]])
OPTS = dict(max_new_tokens=6, do_sample=False, eos_token_id=None)


def _start(tiny_models, blocks, logs, port=0):
    args = ["--backend", "torch", "--port", str(port)]
    return start_node(str(tiny_models["llama"]), blocks, extra_args=args, log_path=logs / f"{blocks}.log")


@pytest.fixture
def nodes(tiny_models, tmp_path):
    started = [_start(tiny_models, b, tmp_path) for b in ("0:3", "3:6")]
    yield started
    for n in started:
        n.stop()


def _open_sessions(url: str) -> int:
    span = RemoteSpan(url)
    try:
        return span.request(Info()).open_sessions
    finally:
        span.close()


def test_generations_reuse_the_connections_of_the_probe_and_of_each_other(nodes, tiny_models):
    POOL.clear()
    remote = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_models["llama"]), peers=[n.url for n in nodes])
    opened, reused = POOL.opened, POOL.reused
    first = remote.generate(PROMPT, **OPTS).tolist()
    second = remote.generate(PROMPT, **OPTS).tolist()
    assert first == second
    assert POOL.opened == opened and POOL.reused == reused + 4  # 2 nodes x 2 generations, no new connection
    assert [_open_sessions(n.url) for n in nodes] == [0, 0]  # every session closed; the connections stay


def test_a_node_that_restarted_meanwhile_gets_a_fresh_connection(nodes, tiny_models, tmp_path):
    POOL.clear()
    remote = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_models["llama"]), peers=[n.url for n in nodes])
    expected = remote.generate(PROMPT, **OPTS).tolist()
    port = int(nodes[1].url.rsplit(":", 1)[1].split("/", 1)[0])
    nodes[1].stop()
    nodes[1] = _start(tiny_models, "3:6", tmp_path, port=port)  # same address, new process
    opened = POOL.opened
    assert remote.generate(PROMPT, **OPTS).tolist() == expected
    assert POOL.opened == opened + 1  # the restarted node's pooled connection was dead: replaced
    assert remote.last_stats.failovers == []  # no failover: the session opened on the new process
