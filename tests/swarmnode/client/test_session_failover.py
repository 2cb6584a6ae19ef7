"""Failover on real tiny-model node processes: kill -9, silent nodes, no replacement, push, closing.

Static peer lists only (``peers=[...]``): each node's span comes from its Info reply, and spare
nodes take over exactly as they would with a tracker.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode.client import AutoDistributedModelForCausalLM, RemoteSpan
from swarmnode.client.failover import FailoverPolicy
from swarmnode.client.session import SessionFailed
from swarmnode.launcher import start_node
from swarmnode.protocol import Info
from swarmnode.testing.delay_proxy import DelayProxy, LinkShape
from swarmnode.testing.wan import node_port

pytestmark = [pytest.mark.slow]

PROMPT = torch.tensor([[1, 504, 3290, 314, 2683, 30, 1012, 17]])
OPTS = dict(max_new_tokens=16, do_sample=False, eos_token_id=None)
ARGS = ["--backend", "torch", "--dtype", "float32", "--no-measure"]


@pytest.fixture
def nodes(tiny_models, tmp_path):
    """Blocks 0:3 once, 3:6 twice (one spare)."""
    path = str(tiny_models["llama"])
    with ThreadPoolExecutor(3) as pool:
        started = list(
            pool.map(
                lambda b: start_node(path, b, extra_args=ARGS, log_path=tmp_path / f"{b}.log"), ["0:3", "3:6", "3:6"]
            )
        )
    yield started
    for n in started:
        if n.process.poll() is None:
            n.process.kill()
        n.process.wait()


@pytest.fixture(scope="module")
def expected(tiny_models):
    local = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()
    return local.generate(PROMPT, pad_token_id=0, **OPTS)[0].tolist()


def _open_sessions(urls):
    total = 0
    for url in urls:
        span = RemoteSpan(url, timeout=5)
        total += span.request(Info()).open_sessions
        span.close()
    return total


def _generate_killing(model, nodes, at: int, hop: int):
    out = [PROMPT]
    for i, token in enumerate(model.stream(PROMPT, **OPTS)):
        out.append(token[:, None])
        if i == at:
            url = model.active_session.chain[hop].url
            victim = next(n for n in nodes if n.url == url)
            victim.process.kill()
            victim.process.wait()
    return torch.cat(out, dim=1)[0].tolist(), victim


@pytest.mark.parametrize("push", [False, True], ids=["client-relay", "push"])
def test_it_replaces_a_killed_node_with_a_spare_and_keeps_every_token(nodes, tiny_models, expected, push):
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(tiny_models["llama"]), peers=[n.url for n in nodes], push=push
    )
    got, victim = _generate_killing(model, nodes, at=6, hop=1)
    assert got == expected
    [event] = model.last_stats.failovers
    assert event.url == victim.url and event.code == "unavailable"
    assert event.replay_tokens == PROMPT.shape[1] + 6  # the prompt, then one step per token so far
    survivors = [n.url for n in nodes if n is not victim]
    assert _open_sessions(survivors) == 0  # closing the generation closed every node session


def test_it_gives_up_naming_the_blocks_nobody_serves(nodes, tiny_models):
    policy = FailoverPolicy(wait_for_cover_s=0.5, rediscover_every_s=0.1)
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(tiny_models["llama"]), peers=[nodes[0].url, nodes[1].url], failover=policy
    )
    with pytest.raises(SessionFailed, match="3-5") as info:
        _generate_killing(model, nodes, at=3, hop=1)
    assert info.value.uncovered == [3, 4, 5]
    assert _open_sessions([nodes[0].url]) == 0


def test_it_stops_after_the_retry_budget(nodes, tiny_models):
    policy = FailoverPolicy(max_failovers=0)
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(tiny_models["llama"]), peers=[n.url for n in nodes], failover=policy
    )
    with pytest.raises(SessionFailed, match="gave up after 0 failovers"):
        _generate_killing(model, nodes, at=2, hop=1)


def test_it_times_out_a_silent_node_from_its_measured_step_time(nodes, tiny_models, expected):
    slow = DelayProxy(node_port(nodes[1].url), LinkShape()).start()
    try:
        peers = [nodes[0].url, slow.url_for(nodes[1].url), nodes[2].url]
        policy = FailoverPolicy(min_step_timeout_s=0.3, step_timeout_factor=5.0)
        model = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_models["llama"]), peers=peers, failover=policy)
        model.rtts.record(nodes[2].url, 10.0)  # make the proxied node the first choice for 3:6
        out = [PROMPT]
        for i, token in enumerate(model.stream(PROMPT, **OPTS)):
            out.append(token[:, None])
            if i == 4:
                assert model.active_session.chain[1].url == peers[1]
                slow.shape = LinkShape(one_way_delay_s=30.0)  # the node goes silent (far past any timeout)
        assert torch.cat(out, dim=1)[0].tolist() == expected
        [event] = model.last_stats.failovers
        assert event.code == "timeout" and event.replacements == [nodes[2].url]
    finally:
        slow.stop()


def test_it_closes_node_sessions_when_the_caller_stops_early(nodes, tiny_models):
    model = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_models["llama"]), peers=[n.url for n in nodes])
    stream = model.stream(PROMPT, **OPTS)
    next(stream)
    assert _open_sessions([n.url for n in nodes]) == 2
    stream.close()  # what a cancelled request does
    assert _open_sessions([n.url for n in nodes]) == 0
