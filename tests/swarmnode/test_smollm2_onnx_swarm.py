"""SmolLM2 through three ONNX Runtime nodes against local ``transformers``.

ONNX Runtime fuses and reorders float operations, so its activations differ from PyTorch's in
the last bits (max abs diff ~5e-4 on hidden states of magnitude ~100). Greedy decoding is
therefore not guaranteed bit-identical; the documented tolerance is: the first 32 tokens equal
on every prompt of a fixed set, and at least 95% of all generated tokens equal.
"""

import copy
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm

pytestmark = [pytest.mark.slow, pytest.mark.model]

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three uses of a paperclip.",
]


@pytest.fixture(scope="module")
def onnx_swarm(smollm2_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("onnx-swarm")
    with LocalSwarm("smollm2", 30, 3, extra_args=["--backend", "onnxruntime"], log_dir=logs) as swarm:
        yield swarm


def test_onnx_nodes_match_local_transformers_within_the_documented_tolerance(onnx_swarm, smollm2_dir):
    local = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    remote = AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=onnx_swarm.urls)
    assert {n.ready["backend"] for n in onnx_swarm.nodes} == {"onnxruntime"}
    same = total = 0
    for prompt in PROMPTS:
        ids = remote.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        n = ids.shape[1]
        expected = local.generate(ids, max_new_tokens=48, do_sample=False, eos_token_id=None, pad_token_id=0)[0, n:]
        got = remote.generate(ids, max_new_tokens=48, do_sample=False, eos_token_id=None)[0, n:]
        assert got[:32].tolist() == expected[:32].tolist(), prompt
        same += int((got == expected).sum())
        total += len(expected)
    assert same / total >= 0.95


def test_concurrent_generations_get_exactly_their_tokens_alone(onnx_swarm):
    """Sessions started together share padded prompt passes and batched decoding passes on every
    node (and batched logits here); each still gets exactly the tokens it gets alone."""
    remote = AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=onnx_swarm.urls)
    prompts = [
        remote.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        for p in PROMPTS
    ]
    opts = dict(max_new_tokens=24, do_sample=False, eos_token_id=None)
    alone = [remote.generate(ids, **opts)[0, ids.shape[1] :].tolist() for ids in prompts]
    together: dict[int, list[int]] = {}
    gate = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        client = copy.copy(remote)
        gate.wait()
        together[i] = [int(t[0]) for t in client.stream(prompts[i], **opts)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [together.get(i) for i in range(len(prompts))] == alone
