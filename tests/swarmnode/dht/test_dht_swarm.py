"""SmolLM2 split over three real nodes that only the DHT knows (``--dht-only``: no portal, no peer list).

A client given nothing but the bootstrap peer's address finds the spans through the DHT and generates exactly
local ``transformers``' greedy tokens; with the bootstrap peer down, it still generates from the fallback list of
last known good peers it keeps on disk.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.dht.source import fallback_path
from swarmnode.launcher import LocalSwarm
from swarmnode.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.model]

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The client's $LAYERSWARM_HOME (its fallback list) in a temporary folder; the nodes keep the real one."""
    path = tmp_path_factory.mktemp("client-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERSWARM_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def swarm(bootstrap, smollm2_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("dht-swarm-logs")
    args = ["--backend", "torch", "--dht", ",".join(bootstrap.addrs), "--dht-only", "--dht-ttl", "30"]
    with LocalSwarm("smollm2", 30, 3, extra_args=args, log_dir=logs) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def announced(swarm, dht_client):
    wait_until(lambda: len(dht_client.lookup("smollm2", range(30))) == 3, 60, "three nodes in the DHT")
    return swarm


@pytest.fixture(scope="module")
def local(smollm2_dir):
    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


def chat_ids(tokenizer, text):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]


def client(smollm2_dir, bootstrap):
    # The checkpoint by path: $LAYERSWARM_HOME is the test's; the nodes announce it as "smollm2" all the same.
    return AutoDistributedModelForCausalLM.from_pretrained(str(smollm2_dir), dht=bootstrap.addrs, head_backend="torch")


def test_a_client_finds_the_spans_through_the_dht_and_gives_the_local_tokens(
    announced, bootstrap, smollm2_dir, local, home
):
    remote = client(smollm2_dir, bootstrap)
    assert [(p.start_block, p.end_block) for p in remote.chain()] == [(0, 10), (10, 20), (20, 30)]
    assert {p.url for p in remote.chain()} == set(announced.urls)
    ids = chat_ids(remote.tokenizer, QUESTION)
    expected = local.generate(ids, max_new_tokens=24, do_sample=False)
    got = remote.generate(ids, max_new_tokens=24, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert "Paris" in remote.tokenizer.decode(got[0, ids.shape[1] :])
    saved = json.loads(fallback_path("smollm2", home).read_text())  # the last known good peers
    assert {p["url"] for p in saved["peers"]} == set(announced.urls)


def test_the_cli_generates_through_the_dht(announced, bootstrap, smollm2_dir, home):
    out = subprocess.run(
        [sys.executable, "-m", "swarmnode", "generate", "--dht", ",".join(bootstrap.addrs)]
        + ["--model", str(smollm2_dir), "--chat", "--prompt", QUESTION, "--greedy", "--max-new-tokens", "12", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Paris" in json.loads(out.stdout.strip().splitlines()[-1])["text"]


def test_with_the_bootstrap_peer_down_the_cached_fallback_list_still_generates(
    announced, bootstrap, smollm2_dir, local, home, caplog
):
    assert fallback_path("smollm2", home).is_file()  # written by the first client
    bootstrap.stop()
    with caplog.at_level(logging.WARNING, logger="swarmnode.dht"):
        remote = client(smollm2_dir, bootstrap)
    assert "cannot ask the DHT" in caplog.text and "3 last known good peers" in caplog.text
    ids = chat_ids(remote.tokenizer, QUESTION)
    expected = local.generate(ids, max_new_tokens=16, do_sample=False)
    assert remote.generate(ids, max_new_tokens=16, do_sample=False).tolist() == expected.tolist()
