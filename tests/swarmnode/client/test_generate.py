"""Generation through real node processes behaves like local ``transformers`` ``generate``."""

import pytest
import torch
from transformers import AutoModelForCausalLM, TextIteratorStreamer

from swarmnode.client import AutoDistributedModelForCausalLM, RemoteSpan, SwarmNotCovering
from swarmnode.launcher import start_node
from swarmnode.protocol import Info


@pytest.fixture(scope="module")
def two_nodes(tiny_models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("gen-logs")
    nodes = [
        start_node(str(tiny_models["llama"]), b, extra_args=["--backend", "torch"], log_path=logs / f"{b}.log")
        for b in ("0:3", "3:6")
    ]
    yield nodes
    for n in nodes:
        n.process.kill()
        n.process.wait()


@pytest.fixture(scope="module")
def remote(two_nodes, tiny_models):
    return AutoDistributedModelForCausalLM.from_pretrained(str(tiny_models["llama"]), peers=[n.url for n in two_nodes])


@pytest.fixture(scope="module")
def local(tiny_models):
    return AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()


PROMPT = torch.tensor([[1, 504, 3290, 314, 2683, 30, 1012, 17]])


def open_sessions(nodes):
    total = 0
    for n in nodes:
        span = RemoteSpan(n.url)
        total += span.request(Info()).open_sessions
        span.close()
    return total


def test_it_generates_the_local_greedy_tokens(remote, local):
    expected = local.generate(PROMPT, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = remote.generate(PROMPT, max_new_tokens=24, do_sample=False, eos_token_id=None)
    assert got.tolist() == expected.tolist()
    assert len(set(got[0, 8:].tolist())) > 1  # a meaningful sequence, not one repeated token


def test_it_generates_batches(remote, local):
    batch = torch.cat([PROMPT, PROMPT.flip(1)])
    expected = local.generate(batch, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert remote.generate(batch, max_new_tokens=8, do_sample=False, eos_token_id=None).tolist() == expected.tolist()


def test_it_samples_like_transformers(remote, local):
    opts = dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.3)
    torch.manual_seed(123)
    expected = local.generate(PROMPT, eos_token_id=None, pad_token_id=0, **opts)
    torch.manual_seed(123)
    got = remote.generate(PROMPT, eos_token_id=None, **opts)
    assert got.tolist() == expected.tolist()


def test_it_stops_at_eos(remote, local):
    free = remote.generate(PROMPT, max_new_tokens=10, eos_token_id=None)
    eos = int(free[0, 8 + 3])
    out = remote.generate(PROMPT, max_new_tokens=10, eos_token_id=eos)
    assert out[0, -1].item() == eos and out.shape[1] <= 8 + 4


def test_it_stops_at_stop_strings(remote):
    free = remote.generate(PROMPT, max_new_tokens=12, eos_token_id=None)
    text = remote.tokenizer.decode(free[0, 8:])
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    out = remote.generate(PROMPT, max_new_tokens=12, eos_token_id=None, stop_strings=[stop])
    assert out.shape[1] < free.shape[1]
    assert stop in remote.tokenizer.decode(out[0, 8:])


def test_it_streams_tokens_to_a_transformers_streamer(remote):
    streamer = TextIteratorStreamer(remote.tokenizer, skip_prompt=True)
    out = remote.generate(PROMPT, max_new_tokens=6, eos_token_id=None, streamer=streamer)
    assert "".join(streamer) == remote.tokenizer.decode(out[0, 8:])


def test_closing_a_stream_closes_every_node_session(remote, two_nodes):
    stream = remote.stream(PROMPT, max_new_tokens=50, eos_token_id=None)
    next(stream)
    assert open_sessions(two_nodes) == 2
    stream.close()
    assert open_sessions(two_nodes) == 0


def test_it_scores_without_a_cache(remote, local):
    torch.testing.assert_close(remote(PROMPT), local(PROMPT).logits, rtol=1e-5, atol=1e-5)


def test_it_refuses_requests_longer_than_the_nodes_allow(remote):
    with pytest.raises(ValueError, match="exceeds"):
        remote.generate(PROMPT, max_new_tokens=600)


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(do_sample=True, temperature=0), dict(top_p=2.0)])
def test_it_refuses_bad_settings(remote, bad):
    with pytest.raises(ValueError):
        remote.generate(PROMPT, **bad)


def test_it_names_uncovered_blocks(two_nodes, tiny_models):
    with pytest.raises(SwarmNotCovering, match="3-5"):
        AutoDistributedModelForCausalLM.from_pretrained(str(tiny_models["llama"]), peers=[two_nodes[0].url])


def test_set_peers_makes_the_client_use_exactly_those_nodes(two_nodes, tiny_models):
    urls = [n.url for n in two_nodes]
    model = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_models["llama"]), peers=urls)
    model.set_peers(urls[:1])
    assert model.urls == urls[:1] and [p.url for p in model.peers] == urls[:1]
    with pytest.raises(SwarmNotCovering):
        model.chain()
    assert sorted(p.url for p in model.set_peers(urls)) == sorted(urls)
    assert [p.url for p in model.chain()] == urls
