"""ONNX Runtime spans against PyTorch spans on the same inputs."""

import copy

import numpy as np
import pytest
import torch

from swarmnode.client.head import load_client_head
from swarmnode.models import Checkpoint, load_span
from swarmnode.models.cachefiles import atomic_write
from swarmnode.models.wire import tensor_to_wire, wire_to_tensor
from swarmnode.runtime import TorchBackend
from swarmnode.runtime.onnx_backend import OnnxBackend, exported_span, fused_span
from swarmnode.runtime.planning import build_backend


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))


def wire(*shape, seed=0):
    return tensor_to_wire(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_it_matches_the_pytorch_span(tiny_models, arch):
    span = load_span(Checkpoint(tiny_models[arch]), 1, 5)
    onnx, ref = OnnxBackend(span), TorchBackend(span)
    oc, tc = onnx.new_cache(), ref.new_cache()
    for i, tokens in enumerate([7, 1, 1, 3, 1]):  # a prompt, then decoding and a short chunk
        x = wire(2, tokens, 64, seed=i)
        a, b = wire_to_tensor(onnx.step(x, oc)), wire_to_tensor(ref.step(x, tc))
        assert (a - b).abs().max().item() < 1e-3
    x = wire(1, 6, 64, seed=9)
    assert (wire_to_tensor(onnx.forward(x)) - wire_to_tensor(ref.forward(x))).abs().max().item() < 1e-3


@pytest.mark.parametrize("new_tokens", [1, 2])  # decoding steps; short chunks (run row by row by the kernel)
def test_a_batch_of_sessions_at_different_positions_matches_each_alone(tiny_models, new_tokens):
    onnx = OnnxBackend(load_span(Checkpoint(tiny_models["llama"]), 0, 6))
    caches = [onnx.new_cache() for _ in range(4)]
    for i, c in enumerate(caches):
        onnx.step(wire(1, 2 + 5 * i, 64, seed=i), c)
    alone = copy.deepcopy(caches)
    xs = [wire(1, new_tokens, 64, seed=10 + i) for i in range(4)]
    together = onnx.step_batch(list(zip(xs, caches, strict=True)))
    for x, c, out in zip(xs, alone, together, strict=True):
        np.testing.assert_allclose(out.to_numpy(), onnx.step(x, c).to_numpy(), rtol=1e-5, atol=1e-4)
    assert [c.length for c in caches] == [c.length for c in alone]


def test_first_prompts_of_different_lengths_share_one_padded_pass_bit_for_bit(tiny_models):
    onnx = OnnxBackend(load_span(Checkpoint(tiny_models["llama"]), 0, 6))
    assert onnx.batches_prompts
    prompts = [wire(1, t, 64, seed=t) for t in (5, 9, 3, 9)]
    caches, alone = [onnx.new_cache() for _ in prompts], [onnx.new_cache() for _ in prompts]
    together = onnx.step_batch(list(zip(prompts, caches, strict=True)))
    for x, c, a, out in zip(prompts, caches, alone, together, strict=True):
        assert out.shape == x.shape
        np.testing.assert_array_equal(out.to_numpy(), onnx.step(x, a).to_numpy())
        assert c.length == a.length == x.shape[1]
    nxt = [wire(1, 1, 64, seed=50 + i) for i in range(4)]  # and their next steps, batched, still agree
    for out, x, a in zip(onnx.step_batch(list(zip(nxt, caches, strict=True))), nxt, alone, strict=True):
        np.testing.assert_allclose(out.to_numpy(), onnx.step(x, a).to_numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="same number of new tokens"):  # not first prompts any more
        onnx.step_batch([(wire(1, 2, 64), caches[0]), (wire(1, 3, 64), caches[1])])


def test_batches_of_changing_members_match_each_session_alone_and_reuse_the_buffers(tiny_models):
    """A session batched again keeps its row of the batch buffers (no copy of its past); any other
    write to its cache (a step alone, another batch) makes the row stale, and it is copied again."""
    onnx = OnnxBackend(load_span(Checkpoint(tiny_models["llama"]), 0, 6))
    caches = [onnx.new_cache() for _ in range(4)]
    for i, c in enumerate(caches):
        onnx.step(wire(1, 3 + 4 * i, 64, seed=i), c)
    alone = copy.deepcopy(caches)
    plan = [[0, 1, 2, 3], [0, 1, 2, 3], [3, 1], "step 1", [2, 0, 3], [0, 1, 2, 3], [3, 2, 1, 0]]
    for n, members in enumerate(plan):
        if members == "step 1":
            x = wire(1, 1, 64, seed=99)
            np.testing.assert_allclose(
                onnx.step(x, caches[1]).to_numpy(), onnx.step(x, alone[1]).to_numpy(), rtol=1e-5, atol=1e-5
            )
            continue
        xs = [wire(1, 1, 64, seed=100 * n + m) for m in members]
        together = onnx.step_batch([(x, caches[m]) for x, m in zip(xs, members, strict=True)])
        for x, m, out in zip(xs, members, together, strict=True):
            np.testing.assert_allclose(out.to_numpy(), onnx.step(x, alone[m]).to_numpy(), rtol=1e-5, atol=1e-4)
    assert [c.length for c in caches] == [c.length for c in alone]
    # Copies of a past: 4 (first batch), 0 (same rows), 1 (session 3 moves to row 0; 1 stays), 1 (session 0:
    # its row went to 3; 2 and 3 still hold theirs), 1 (session 1, stepped alone), 0 (same members, any order).
    assert onnx.rows_copied == 7


@pytest.mark.parametrize("fused", [True, False])
def test_it_exports_once_and_reuses_the_file(tiny_models, fused):
    span = load_span(Checkpoint(tiny_models["llama"]), 0, 3)
    build = fused_span if fused else exported_span
    path = build(span)
    mtime = path.stat().st_mtime_ns
    assert OnnxBackend(span, fused=fused).path == path
    assert path.stat().st_mtime_ns == mtime
    other = load_span(Checkpoint(tiny_models["llama"]), 3, 6)
    assert build(other) != path  # different weights, different file


def test_two_writers_of_one_cached_file_do_not_trip_over_each_other(tmp_path):
    """Two processes exporting the same span at once each write their own scratch file; the last rename
    wins (both are the same bytes). A failed write leaves no scratch file behind."""
    target = tmp_path / "onnx" / "span.onnx"
    with atomic_write(target) as first:
        with atomic_write(target) as second:
            assert first != second
            second.write_bytes(b"second")
        first.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_write(target) as third:
        third.write_bytes(b"half")
        raise RuntimeError("export failed")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["span.onnx"]


def test_the_fused_and_the_portable_graph_agree_past_the_first_buffer(tiny_models):
    """Long enough to grow the in-place buffers (64 positions, then doubled) twice."""
    span = load_span(Checkpoint(tiny_models["qwen2"]), 0, 6)
    fused, portable = OnnxBackend(span), OnnxBackend(span, fused=False)
    assert fused.fused and not portable.fused
    fc, pc = fused.new_cache(), portable.new_cache()
    for i, tokens in enumerate([50, *[1] * 20, 4, 70, 1]):
        x = wire(2, tokens, 64, seed=i)
        a, b = fused.step(x, fc).to_numpy(), portable.step(x, pc).to_numpy()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert fc.length == pc.length == 145 and fc.capacity == 256


def test_int8_weights_stay_close(tiny_models):
    span = load_span(Checkpoint(tiny_models["llama"]), 0, 6)
    fp32, int8 = OnnxBackend(span), OnnxBackend(span, "int8")
    assert int8.weight_bytes < fp32.weight_bytes
    x = wire(1, 5, 64)
    a, b = fp32.forward(x).to_numpy(), int8.forward(x).to_numpy()
    assert np.abs(a - b).mean() < 0.05 * np.abs(a).mean()


@pytest.mark.slow
def test_int8_smollm2_blocks_are_over_3_5x_smaller(smollm2_dir):
    ck = Checkpoint(smollm2_dir)
    span = load_span(ck, 0, 10)
    fp32, int8 = OnnxBackend(span), OnnxBackend(span, "int8")
    assert fp32.weight_bytes / int8.weight_bytes >= 3.5
    ids = ck.tokenizer()("The lighthouse keeper wound the clockwork every night.", return_tensors="pt")["input_ids"]
    x = tensor_to_wire(load_client_head(ck).embed_tokens(ids))
    a, b = fp32.forward(x).to_numpy(), int8.forward(x).to_numpy()
    # ~7% drift in the hidden states after ten blocks; perplexity (bench-backends) stays within 2%
    assert np.abs(a - b).mean() < 0.1 * np.abs(a).mean()


def test_auto_picks_a_measured_backend_and_says_why(tiny_models):
    backend, reason = build_backend(load_span(Checkpoint(tiny_models["llama"]), 0, 6), "cpu", "float32")
    assert backend.name in ("torch", "onnxruntime")
    assert "measured decoding step" in reason and "onnxruntime" in reason and "torch" in reason


@pytest.mark.parametrize(
    "torch_wins, chosen, timings",
    [((True, False), "onnxruntime", 2), ((True, True, True), "torch", 3), ((False,), "onnxruntime", 1)],
)
def test_auto_keeps_onnx_runtime_unless_pytorch_wins_every_timing(
    tiny_models, monkeypatch, torch_wins, chosen, timings
):
    """A burst of load from elsewhere slows ONNX Runtime far more than PyTorch: one lost timing is not enough."""
    from swarmnode.runtime import planning

    outcomes = iter(torch_wins)
    monkeypatch.setattr(planning, "AUTO_PAUSE_S", 0.0)
    monkeypatch.setattr(
        planning,
        "_decode_ms",
        lambda candidates, hidden: (
            {"torch": 5.0, "onnxruntime": 9.0} if next(outcomes) else {"torch": 9.0, "onnxruntime": 5.0}
        ),
    )
    backend, reason = build_backend(load_span(Checkpoint(tiny_models["llama"]), 0, 2), "cpu", "float32")
    assert backend.name == chosen
    assert reason.count("torch") == timings  # every timing is reported


def test_bad_combinations_are_refused(tiny_models):
    span = load_span(Checkpoint(tiny_models["llama"]), 0, 2)
    with pytest.raises(ValueError, match="onnxruntime"):
        build_backend(span, "cpu", "int8", backend="torch")
    with pytest.raises(ValueError, match="unknown backend"):
        build_backend(span, "cpu", "float32", backend="tpu")
