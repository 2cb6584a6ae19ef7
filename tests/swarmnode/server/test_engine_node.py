"""Engine behaviour seen from outside a real node: sizing, refusals, batching, mixed dtypes."""

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from swarmnode.client import RemoteSpan
from swarmnode.launcher import start_node
from swarmnode.models import Checkpoint, load_span
from swarmnode.models.wire import tensor_to_wire, wire_to_tensor
from swarmnode.protocol import Info, OpenSession, Step, StepResult, tensor_from_numpy
from swarmnode.runtime import TorchBackend


def serve(args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "swarmnode", "serve", *args], capture_output=True, text=True, timeout=timeout
    )


def test_a_node_asked_for_more_than_its_memory_refuses_clearly(tiny_models):
    out = serve(
        [
            "--model",
            str(tiny_models["llama"]),
            "--blocks",
            "0:6",
            "--max-memory",
            "300kB",
            "--cache-tokens",
            "100",
            "--backend",
            "torch",
        ]
    )
    assert out.returncode == 2
    assert "do not fit" in out.stderr and "MB" in out.stderr
    out = serve(["--model", str(tiny_models["llama"]), "--num-blocks", "auto", "--max-memory", "1kB"])
    assert out.returncode == 2 and "not even one block fits" in out.stderr


def test_num_blocks_auto_serves_what_fits(tiny_models, tmp_path):
    # one tiny block: 4*64*64 + 2*64*32 + 3*64*128 params + norms, fp32; KV: 2*2*16*4 bytes per token
    node = start_node(
        str(tiny_models["llama"]),
        None,
        extra_args=["--num-blocks", "auto", "--max-memory", "600kB", "--cache-tokens", "100", "--backend", "torch"],
        log_path=tmp_path / "n.log",
    )
    try:
        assert (node.ready["start_block"], node.ready["end_block"]) == (0, 3)
    finally:
        node.process.kill()


@pytest.fixture(scope="module")
def onnx_node(tiny_models, tmp_path_factory):
    node = start_node(
        str(tiny_models["llama"]),
        "0:6",
        extra_args=["--backend", "onnxruntime"],
        log_path=tmp_path_factory.mktemp("onnx") / "n.log",
    )
    yield node
    node.process.kill()
    node.process.wait()


def test_the_node_announces_its_backend_and_precision(onnx_node):
    span = RemoteSpan(onnx_node.url)
    info = span.request(Info())
    span.close()
    assert (info.backend, info.dtype, info.device) == ("onnxruntime", "float32", "cpu")


def test_concurrent_sessions_with_mixed_dtypes_each_get_their_own_answer(onnx_node, tiny_models):
    """Sessions at different positions and in different wire dtypes, stepping at the same time."""
    ref = TorchBackend(load_span(Checkpoint(tiny_models["llama"]), 0, 6))
    rng = np.random.default_rng(0)
    plans = []
    for i in range(6):
        dtype = "float16" if i % 2 else "float32"
        prompt = rng.standard_normal((1, 3 + 2 * i, 64)).astype(np.float32)
        steps = [rng.standard_normal((1, 1, 64)).astype(np.float32) for _ in range(5)]
        plans.append((dtype, prompt, steps))
    results: dict[int, list] = {}

    def session(i):
        dtype, prompt, steps = plans[i]
        span = RemoteSpan(onnx_node.url)
        span.request(OpenSession(session_id=f"mix{i}", max_length=64, dtype=dtype))
        pos, outs = 0, []
        for x in [prompt, *steps]:
            reply = span.request(Step(session_id=f"mix{i}", position=pos, hidden=tensor_from_numpy(x.astype(dtype))))
            assert isinstance(reply, StepResult) and reply.hidden.dtype == dtype
            pos = reply.position
            outs.append(reply.hidden.to_numpy().astype(np.float32))
        span.close()
        results[i] = outs

    threads = [threading.Thread(target=session, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (dtype, prompt, steps) in enumerate(plans):
        cache = ref.new_cache()
        for x, got in zip([prompt, *steps], results[i], strict=True):
            wire = tensor_to_wire(torch.from_numpy(x.astype(dtype)).float())
            expected = wire_to_tensor(ref.step(wire, cache)).numpy()
            tol = 2e-2 if dtype == "float16" else 1e-3
            np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * max(1.0, np.abs(expected).max()))
