"""``swarmnode bench-backends``: every backend in its own process, on a tiny model."""

import multiprocessing

import pytest

from swarmnode.bench.backends import BACKENDS, _Process, run_bench_backends
from swarmnode.cli import build_parser


@pytest.mark.slow
def test_it_measures_every_backend_in_its_own_process_and_reports_speed_quality_and_size(tiny_models):
    result = run_bench_backends(str(tiny_models["llama"]), new_tokens=6, runs=1)
    for kind in BACKENDS:
        assert result[f"{kind}_tok_s"] > 0
        assert result["weight_bytes"][kind] > 0
    assert result["transformers_generate_tok_s"] > 0
    assert result["ratios_vs_torch_fp32"]["torch_fp32"] == 1.0
    assert result["default_backend"] in ("torch", "onnxruntime") and "ms" in result["default_reason"]
    ppl = result["ppl"]
    assert set(ppl) == {*BACKENDS, "torch_bf16"}
    assert ppl["onnx_fp32"] == pytest.approx(ppl["torch_fp32"], rel=1e-3)
    # int8 weights: the Linear weights shrink 4x; the tiny model's embedding (kept fp32) makes it less
    assert result["weight_bytes"]["onnx_int8"] < result["weight_bytes"]["onnx_fp32"]
    # the same greedy tokens from transformers generate and the fp32 backends (separate processes)
    assert result["transformers_tokens_equal_to_torch_fp32"] is True
    assert result["first32_tokens_equal_to_torch_fp32"]["onnx_fp32"] == 6
    # The memory-bound ceiling is measured too. (It bounds the backends only for a model far larger than
    # the CPU caches; this tiny one fits in them, so no comparison here. SmolLM2: see the README.)
    assert result["fp32_memory_bound_tok_s"] > 0


def test_a_backend_that_fails_to_load_is_named_in_the_error(tmp_path):
    process = _Process(multiprocessing.get_context("spawn"), "onnx_fp32", str(tmp_path / "missing"), 4)
    try:
        with pytest.raises(RuntimeError, match="onnx_fp32 failed: FileNotFoundError"):
            process.call()
    finally:
        process.stop()
    assert process.process.exitcode == 0


def test_it_is_a_cli_command_with_json_output():
    args = build_parser().parse_args(["bench-backends", "--json", "--runs", "1"])
    assert args.json and args.runs == 1 and args.func.__name__ == "_bench_backends"
