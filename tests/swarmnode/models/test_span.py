"""Spans built from checkpoints compute exactly what the whole local model computes."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode.client.head import load_client_head
from swarmnode.models import Checkpoint, load_span, resolve_model
from swarmnode.models.span import family_of


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_it_matches_the_local_model_exactly_across_spans(tiny_models, arch):
    path = tiny_models[arch]
    ck = Checkpoint(path)
    spans = [load_span(ck, a, b) for a, b in [(0, 2), (2, 5), (5, 6)]]
    head = load_client_head(ck)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(0, 49152, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = ref(ids).logits
        h = head.embed_tokens(ids)
        for span in spans:
            h = span(h)
        got = head.logits(h)
    assert torch.equal(got, expected)


def test_it_matches_incremental_decoding_with_caches(tiny_models):
    ck = Checkpoint(tiny_models["llama"])
    spans = [load_span(ck, 0, 3), load_span(ck, 3, 6)]
    head = load_client_head(ck)
    ids = torch.randint(0, 49152, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = head.embed_tokens(ids)
        for span in spans:
            full = span(full)
        caches = [s.new_cache() for s in spans]
        outs = []
        for chunk in (ids[:, :5], ids[:, 5:6], ids[:, 6:9]):
            h = head.embed_tokens(chunk)
            for span, cache in zip(spans, caches, strict=True):
                h = span(h, cache)
            outs.append(h)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-5, atol=1e-5)


def test_it_loads_only_the_span_weights(tiny_models):
    ck = Checkpoint(tiny_models["llama"])
    span = load_span(ck, 2, 4)
    assert len(span.inner.layers) == 2
    assert span.inner.embed_tokens is None
    n_params = sum(p.numel() for p in span.parameters())  # Llama's input side has no weights of its own
    per_block = sum(p.numel() for p in load_span(ck, 0, 1).parameters())
    assert n_params == 2 * per_block


def test_it_keeps_untied_lm_heads(tiny_models):
    head = load_client_head(Checkpoint(tiny_models["qwen2"]))
    assert head.lm_head.weight.data_ptr() != head.embed.weight.data_ptr()
    tied = load_client_head(Checkpoint(tiny_models["llama"]))
    assert tied.lm_head.weight.data_ptr() == tied.embed.weight.data_ptr()


@pytest.mark.parametrize("start, end", [(0, 0), (4, 2), (0, 7), (-1, 2)])
def test_it_refuses_spans_outside_the_model(tiny_models, start, end):
    with pytest.raises(ValueError, match="outside"):
        load_span(Checkpoint(tiny_models["llama"]), start, end)


def test_it_names_unsupported_architectures(monkeypatch):
    from transformers import AutoConfig

    from swarmnode.models import structure

    t5 = AutoConfig.for_model("t5", d_model=64, num_layers=2, num_heads=4, d_ff=128)
    with pytest.raises(NotImplementedError, match="'t5'.*no causal-LM class"):
        family_of(t5)  # encoder-decoder: no causal-LM class to map
    llama = AutoConfig.for_model("llama", hidden_size=64, num_hidden_layers=3, num_attention_heads=4)
    monkeypatch.setattr(structure, "FINAL_NORM_NAMES", ("final_norm_of_another_name",))
    with pytest.raises(NotImplementedError, match="no final norm on 'model'"):
        structure.detect_structure(llama)


def test_it_resolves_names_dirs_and_refuses_the_rest(tiny_models, smollm2_dir, tmp_path):
    assert resolve_model("smollm2") == smollm2_dir
    assert resolve_model(str(tiny_models["llama"])) == tiny_models["llama"]
    with pytest.raises(FileNotFoundError, match="neither"):
        resolve_model(str(tmp_path / "nothing-here"))


def test_the_default_model_is_smollm2(smollm2_dir):
    ck = Checkpoint(smollm2_dir)
    assert (ck.num_blocks, ck.hidden_size, ck.config.model_type) == (30, 576, "llama")
    assert ck.config.rope_parameters["rope_theta"] == 100000.0


def test_the_head_batches_rows_from_concurrent_callers(tiny_models):
    import threading

    head = load_client_head(Checkpoint(tiny_models["llama"]))
    rows = [torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(i)) for i in range(12)]
    expected = [head._logits(r) for r in rows]
    got = [None] * len(rows)
    gate = threading.Barrier(len(rows))

    def call(i):
        gate.wait()
        for _ in range(5):
            got[i] = head.logits(rows[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)  # each caller got its own row back
    assert head._rows.largest_batch > 1


def test_a_lone_caller_is_computed_alone_and_exactly(tiny_models):
    head = load_client_head(Checkpoint(tiny_models["llama"]))
    row = torch.randn(1, 1, 64)
    assert torch.equal(head.logits(row), head._logits(row))
    assert head._rows.largest_batch == 1


def _lockstep(gather_s, delays, rounds, offsets=None):
    """Member i starts after ``offsets[i]`` and sends a row ``delays[i]`` after each of its results.

    Returns the batch sizes the head ran.
    """
    import threading
    import time

    from swarmnode.client.batching import RowBatcher

    sizes = []
    batcher = RowBatcher(lambda rows: (sizes.append(rows.shape[0]), rows)[1], gather_s=gather_s)
    gate = threading.Barrier(len(delays))

    def member(i):
        with batcher.participant() as me:
            gate.wait()
            time.sleep((offsets or [0.0] * len(delays))[i])
            for _ in range(rounds):
                time.sleep(delays[i])
                batcher(torch.zeros(1, 1, 2), me)

    threads = [threading.Thread(target=member, args=(i,)) for i in range(len(delays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sizes


def test_concurrent_generations_that_drifted_apart_merge_into_one_batch_per_round():
    halves = [0.0] * 4 + [0.04] * 4  # same pace (~100 ms a round), half of them 40 ms behind
    merged = _lockstep(0.15, [0.1] * 8, 6, halves)
    assert merged[-3:] == [8, 8, 8]
    assert max(_lockstep(0.0, [0.1] * 8, 6, halves)) < 8  # without gathering they never all meet


def test_a_slow_generation_holds_the_others_back_by_at_most_half_their_pace():
    import time

    began = time.monotonic()
    _lockstep(0.15, [0.02, 0.02, 0.3], 10)
    # the slow one alone needs 3 s; fast ones waiting the full 0.15 s for it at every row would need 4.7 s
    assert time.monotonic() - began < 3.0 + 0.8


def test_the_onnx_head_gives_the_torch_logits(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    for arch in ("llama", "qwen2"):  # tied and untied LM heads
        head = load_client_head(Checkpoint(tiny_models[arch]))
        assert head.enable_onnx()
        hidden = torch.randn(2, 3, 64)
        torch.testing.assert_close(head.logits(hidden, fast=True), head.logits(hidden), rtol=1e-4, atol=1e-4)
        row = hidden[:1, :1]
        torch.testing.assert_close(head.logits(row, fast=True), head.logits(row), rtol=1e-4, atol=1e-4)
