"""all-MiniLM-L6-v2 split over two real node processes (0:3, 3:6): sentence embeddings through the swarm.

Each sentence's mean-pooled, normalised embedding equals the local ``transformers`` model's for that
sentence alone (max abs diff <= 1e-5), also when sentences of different lengths share a padded batch.
"""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModel

from swarmnode.client import AutoDistributedModel, RemoteError, RemoteSpan, SwarmNotCovering
from swarmnode.client.embedding import DistributedEncoderModel, InputTooLong
from swarmnode.launcher import LocalSwarm
from swarmnode.models import resolve_model
from swarmnode.protocol import Forward, OpenSession, tensor_from_numpy
from swarmnode.testing.sentences import SENTENCES

pytestmark = [pytest.mark.slow, pytest.mark.model]


@pytest.fixture(scope="module")
def minilm_swarm(tmp_path_factory):
    resolve_model("minilm")  # fetched by `make model`
    logs = tmp_path_factory.mktemp("minilm-logs")
    with LocalSwarm("minilm", 6, 2, log_dir=logs) as swarm:  # default backend: ONNX refuses encoders
        swarm.logs = logs
        yield swarm


@pytest.fixture(scope="module")
def remote(minilm_swarm) -> DistributedEncoderModel:
    return AutoDistributedModel.from_pretrained("minilm", peers=minilm_swarm.urls)


@pytest.fixture(scope="module")
def local_embeddings(remote):
    model = AutoModel.from_pretrained(resolve_model("minilm"), dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for text in SENTENCES:  # one at a time: no padding at all
            batch = remote.tokenizer([text], return_tensors="pt")
            out.append(torch.nn.functional.normalize(model(**batch).last_hidden_state.mean(dim=1), dim=1)[0])
    return torch.stack(out)


def test_it_routes_over_two_pytorch_spans_onnx_refusing_with_the_reason_logged(minilm_swarm, remote):
    assert [(p.start_block, p.end_block, p.backend) for p in remote.chain()] == [(0, 3, "torch"), (3, 6, "torch")]
    assert remote.dimensions == 384
    for log in minilm_swarm.logs.glob("node-*.log"):
        assert "ONNX Runtime unavailable for this span (bert: no 'layers' block list" in log.read_text()


@pytest.mark.parametrize("batch_size", [8, 3, 1])
def test_eight_sentences_embed_as_the_local_model_does(remote, local_embeddings, batch_size):
    got = remote.embed(SENTENCES, batch_size=batch_size)
    assert got.shape == (8, 384)
    assert (got - local_embeddings).abs().max().item() <= 1e-5
    assert torch.allclose(got.norm(dim=1), torch.ones(8), atol=1e-5)


def test_similar_sentences_are_closer(remote):
    a, b, c = remote.embed(["A cat sits on a mat.", "The cat sat on the mat.", "Stock prices fell sharply."])
    assert float(a @ b) > float(a @ c) + 0.3


def test_a_text_longer_than_the_model_takes_is_refused_before_any_node_work(remote):
    with pytest.raises(InputTooLong, match="input 1 has .* tokens; this model takes at most 256"):
        remote.embed(["short", "word " * 300])


def _request(url, message):
    span = RemoteSpan(url, timeout=30)
    try:
        return span.request(message)
    finally:
        span.close()


def test_strangers_requests_get_clear_errors_and_the_nodes_carry_on(minilm_swarm, remote, local_embeddings):
    url = minilm_swarm.urls[0]
    hidden = tensor_from_numpy(np.zeros((2, 4, 384), dtype=np.float32))
    cases = [
        (OpenSession(session_id="s", max_length=16), "encoder_only"),  # no KV cache: no sessions
        (Forward(hidden=hidden, lengths=(4, 0)), "bad_field"),  # an empty row
        (Forward(hidden=hidden, lengths=(4,)), "bad_field"),  # one length for two rows
        (Forward(hidden=tensor_from_numpy(np.zeros((1, 600, 384), dtype=np.float32))), "too_many_tokens"),
        (Forward(hidden=tensor_from_numpy(np.full((1, 3, 384), np.nan, dtype=np.float32))), "not_finite"),
    ]
    for message, code in cases:
        with pytest.raises(RemoteError) as err:
            _request(url, message)
        assert err.value.code == code
    assert (remote.embed(SENTENCES[:2]) - local_embeddings[:2]).abs().max().item() <= 1e-5


def test_a_result_not_signed_by_the_announced_key_is_never_used(minilm_swarm):
    client = AutoDistributedModel.from_pretrained("minilm", peers=minilm_swarm.urls)
    first, second = sorted(client.peers, key=lambda p: p.start_block)
    # The client believes the first node holds the second's key: its (honestly signed) results no longer verify,
    # and no other node serves blocks 0:3, so the request fails rather than use an unattributable result.
    client.peers = [dataclasses.replace(first, public_key=second.public_key), second]
    with pytest.raises(SwarmNotCovering):
        client.embed(SENTENCES[:3])
    assert client.failovers == 1 and first.url in client.bans.banned()


def test_the_cli_prints_the_local_models_embeddings(minilm_swarm, local_embeddings):
    cmd = [sys.executable, "-m", "swarmnode", "embed", "--peers", ",".join(minilm_swarm.urls), "--model", "minilm"]
    out = subprocess.run(cmd, input="\n".join(SENTENCES[:2]), capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dimensions"] == 384
    assert (torch.tensor(result["embeddings"]) - local_embeddings[:2]).abs().max().item() <= 1e-5
    refused = subprocess.run([*cmd[:-1], "smollm2", "--text", "hi"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "not an encoder-only model" in refused.stderr
