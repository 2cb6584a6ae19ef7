"""The decoder-family matrix: one row per family of ``swarmnode/models/families.py``.

Each row is a tiny random-weight model (6 blocks, hidden 64) of that family's ``transformers`` class:
span-chain logits equal the whole model's, cached decoding too, greedy tokens through real node
processes equal local ``transformers``, and ONNX Runtime either matches PyTorch or is refused with
the reason logged (the node falling back to PyTorch). ``docs/architectures.md`` is checked against it.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from swarmnode.client.head import load_client_head
from swarmnode.models import Checkpoint, load_span
from swarmnode.models.families import FAMILIES, architectures_table, tiny_config

ROWS = [pytest.param(f, id=f.model_type) for f in FAMILIES]
SPANS = [(0, 2), (2, 5), (5, 6)]
DOC = Path(__file__).resolve().parents[3] / "docs" / "architectures.md"


def _save_tiny(fam, out: Path, tokenizer_from: Path) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(fam)).eval()
    with torch.no_grad():  # larger weights than the init so that greedy tokens vary
        for p in model.parameters():
            p.mul_(2.0) if p.dim() > 1 else None
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, out / name)
    return out


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, smollm2_dir) -> dict[str, Path]:
    """One tiny checkpoint per family (with the default model's tokenizer: same vocabulary size)."""
    root = tmp_path_factory.mktemp("families")
    return {f.model_type: _save_tiny(f, root / f.model_type, smollm2_dir) for f in FAMILIES}


def _local(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("fam", ROWS)
def test_span_chains_compute_the_whole_model(family_models, fam):
    path = family_models[fam.model_type]
    ck = Checkpoint(path)
    spans = [load_span(ck, a, b) for a, b in SPANS]
    head = load_client_head(ck)
    ids = torch.randint(0, 49152, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = _local(path)(ids).logits
        h = head.embed_tokens(ids)
        for span in spans:
            h = span(h)
        torch.testing.assert_close(head.logits(h), expected, rtol=0, atol=1e-5)
        # Cached decoding, chunk by chunk: positions (learned, rotary, ALiBi) and sliding windows (4) advance.
        caches, outs = [s.new_cache() for s in spans], []
        for a, b in ((0, 5), (5, 6), (6, 7), (7, 9)):
            h = head.embed_tokens(ids[:, a:b], a)
            for span, cache in zip(spans, caches, strict=True):
                h = span(h, cache)
            outs.append(head.logits(h))
    torch.testing.assert_close(torch.cat(outs, dim=1), expected, rtol=1e-4, atol=1e-4)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-6)


@pytest.mark.parametrize("fam", ROWS)
def test_onnx_runtime_matches_or_is_refused_for_pytorch(family_models, fam, caplog, tmp_path, monkeypatch):
    from swarmnode.models.wire import tensor_to_wire, wire_to_tensor
    from swarmnode.runtime.onnx_backend import OnnxBackend
    from swarmnode.runtime.planning import build_backend

    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    span = load_span(Checkpoint(family_models[fam.model_type]), 2, 5)
    with caplog.at_level(logging.WARNING, logger="swarmnode"):
        backend, reason = build_backend(span, "cpu", "float32", backend="onnxruntime")
    if not fam.onnx:
        assert backend.name == "torch" and reason.startswith("ONNX Runtime refused"), reason
        assert any("ONNX Runtime refused" in r.getMessage() for r in caplog.records)
    else:
        assert backend.name == "onnxruntime", reason
        x = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(3))
        ref_cache, cache = span.new_cache(), backend.new_cache()
        for a, b in ((0, 4), (4, 5), (5, 6)):  # prompt, then decoding steps with the cache
            with torch.inference_mode():
                expected = span(x[:, a:b], ref_cache)
            got = wire_to_tensor(backend.step(tensor_to_wire(x[:, a:b]), cache))
            assert _relative(got, expected) < 1e-3
    try:  # the portable export is what browser nodes run
        OnnxBackend(span, fused=False)
        browser = True
    except NotImplementedError:
        browser = False
    assert browser == fam.browser


@pytest.mark.parametrize("fam", ROWS)
def test_the_clients_onnx_head_matches_or_is_refused(family_models, fam, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    head = load_client_head(Checkpoint(family_models[fam.model_type]))
    hidden = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(4))
    if head.enable_onnx():  # RMSNorm + plain head only; (1 + w) norms, LayerNorms, transforms are refused
        assert _relative(head.logits(hidden, fast=True), head.logits(hidden)) < 1e-4
    else:
        assert head.onnx is None and torch.equal(head.logits(hidden, fast=True), head.logits(hidden))


def test_the_architectures_doc_matches_the_matrix():
    assert DOC.read_text() == architectures_table(), "run: python -m swarmnode.models.families > docs/architectures.md"


@pytest.fixture(scope="module")
def family_swarms(family_models, tmp_path_factory):
    """Two real node processes (PyTorch, blocks 0:3 and 3:6) per family, started a few at a time."""
    from swarmnode.launcher import start_node

    logs = tmp_path_factory.mktemp("family-logs")

    def start(job):
        name, blocks = job
        return start_node(
            str(family_models[name]), blocks, extra_args=["--backend", "torch"], log_path=logs / f"{name}-{blocks}.log"
        )

    jobs = [(f.model_type, b) for f in FAMILIES for b in ("0:3", "3:6")]
    nodes = {}
    with ThreadPoolExecutor(6) as pool:
        for job, node in zip(jobs, pool.map(start, jobs), strict=True):
            nodes.setdefault(job[0], []).append(node)
    yield nodes
    for pair in nodes.values():
        for node in pair:
            node.process.kill()
            node.process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("fam", ROWS)
def test_greedy_tokens_through_node_processes_equal_local_transformers(family_models, family_swarms, fam):
    from swarmnode.client import AutoDistributedModelForCausalLM

    path = family_models[fam.model_type]
    prompt = torch.tensor([[1, 504, 3290, 314, 2683, 30, 1012, 17]])
    expected = _local(path).generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    remote = AutoDistributedModelForCausalLM.from_pretrained(
        str(path), peers=[n.url for n in family_swarms[fam.model_type]]
    )
    got = remote.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize(
    "model_type, stack, layers, norm, extra",
    [
        ("llama", "model", "layers", "norm", {}),
        ("gpt2", "transformer", "h", "ln_f", {}),
        ("gpt_neox", "gpt_neox", "layers", "final_layer_norm", {}),
        ("opt", "model.decoder", "layers", "final_layer_norm", {"output_projections": ("project_out",)}),
        ("bloom", "transformer", "h", "ln_f", {}),
        ("falcon", "transformer", "h", "ln_f", {}),
        ("gemma2", "model", "layers", "norm", {"logit_transforms": (("softcap", 30.0),)}),
        ("granite", "model", "layers", "norm", {"logit_transforms": (("divide", 4.0),)}),
    ],
)
def test_structure_is_detected_from_the_model_class(model_type, stack, layers, norm, extra):
    from swarmnode.models.families import family
    from swarmnode.models.structure import detect_structure

    found = detect_structure(tiny_config(family(model_type)))
    assert (found.stack_path, found.layers_attr, found.norm_attr, found.num_blocks) == (stack, layers, norm, 6)
    for name, value in extra.items():
        assert getattr(found, name) == value
    assert found.layers_prefix == f"{stack}.{layers}."
