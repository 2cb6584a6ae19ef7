"""The audit tolerance (spec §11.3) against real nodes of every backend and precision: honest results of
another backend or precision pass, a perturbed result fails."""

from __future__ import annotations

import pytest
import torch

from swarmnode.client.head import load_client_head
from swarmnode.client.remote import RemoteSpan
from swarmnode.launcher import start_node
from swarmnode.models import Checkpoint, resolve_model
from swarmnode.models.wire import tensor_to_wire
from swarmnode.protocol import Forward, OpenSession, Step
from swarmnode.protocol.compare import relative_errors, to_float32, tolerance_for

pytestmark = [pytest.mark.slow, pytest.mark.model]

BASE = ["--no-measure", "--num-threads", "1"]
NODES = {
    "reference": ["--backend", "torch", "--dtype", "float32"],
    "onnx": ["--backend", "onnxruntime", "--dtype", "float32"],
    "bf16": ["--backend", "torch", "--dtype", "bfloat16"],
    "int8": ["--dtype", "int8"],
    "corrupt": ["--backend", "torch", "--dtype", "float32", "--corrupt-fraction", "1.0"],
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Each node's output for the same real text embeddings through SmolLM2 blocks 0:3."""
    logs = tmp_path_factory.mktemp("tolerance-logs")
    checkpoint = Checkpoint(resolve_model("smollm2"))
    head = load_client_head(checkpoint, torch.float32)
    ids = checkpoint.tokenizer()("The lighthouse keeper climbed the spiral stairs every evening at dusk.")["input_ids"]
    with torch.inference_mode():
        x = tensor_to_wire(head.embed_tokens(torch.tensor([ids])))
    out = {}
    for name, args in NODES.items():
        node = start_node("smollm2", "0:3", extra_args=BASE + args, log_path=logs / f"{name}.log")
        try:
            span = RemoteSpan(node.url)
            info = span.info()
            if name == "corrupt":  # it perturbs steps (forwards stay honest, which is all an audit replays)
                span.request(OpenSession(session_id="t", max_length=len(ids)))
                reply = span.request(Step(session_id="t", position=0, hidden=x))
            else:
                reply = span.request(Forward(hidden=x))
            out[name] = (info.dtype, to_float32(reply.hidden))
            span.close()
        finally:
            node.process.kill()
            node.process.wait()
    return out


@pytest.mark.parametrize("name", ["onnx", "bf16", "int8"])
def test_it_accepts_honest_results_of_other_backends_and_precisions(outputs, name):
    dtype, out = outputs[name]
    error = float(relative_errors(out, outputs["reference"][1]).max())
    assert error <= tolerance_for(dtype, "float32") / 1.5, (name, dtype, error)  # with a margin


def test_it_flags_a_perturbed_result_even_against_the_loosest_tolerance(outputs):
    error = float(relative_errors(outputs["corrupt"][1], outputs["reference"][1]).max())
    assert error > tolerance_for("int8")
