"""``swarmnode bench-backends``: every backend and precision on the whole model, one run.

Decoding tokens/s of all blocks in this process (no network), perplexity of a fixed text for
each precision, and weight bytes, so speed and quality are read side by side.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

import torch

from swarmnode.bench import DEFAULT_PROMPT, local_backend_generate

PPL_TEXT = (
    "The lighthouse stood at the end of a long spit of rock, white against the grey sea. Every evening the "
    "keeper climbed the spiral stairs, trimmed the wick and wound the clockwork that turned the great lens. "
    "Ships far out on the water saw the beam sweep across the waves and knew where the rocks were. In the "
    "morning he wrote the weather in his log: the wind, the height of the swell, the ships that had passed. "
    "Years went by like this, and the keeper grew old, but the light never failed on a single night."
)


class TorchInt8Backend:
    """PyTorch dynamic int8 (``torch.ao`` quantized Linear layers) for comparison only."""

    name = "torch-int8"

    def __init__(self, span) -> None:
        from torch.ao.quantization import quantize_dynamic

        from swarmnode.runtime import TorchBackend

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = quantize_dynamic(span, {torch.nn.Linear}, dtype=torch.qint8)
        self._inner = TorchBackend(quantized)
        self.weight_bytes = sum(
            m.weight().numel() for m in quantized.modules() if hasattr(m, "weight") and callable(m.weight)
        ) + sum(p.numel() * p.element_size() for p in quantized.parameters())
        self.step, self.forward, self.new_cache = self._inner.step, self._inner.forward, self._inner.new_cache


def perplexity(backend, head, ids: torch.Tensor) -> float:
    """Perplexity of ``ids`` under the whole model run by ``backend``."""
    from swarmnode.runtime.backend import tensor_to_wire, wire_to_tensor

    with torch.inference_mode():
        hidden = wire_to_tensor(backend.forward(tensor_to_wire(head.embed_tokens(ids))))
        logits = head.logits(hidden)[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    return math.exp(loss.item())


def run_bench_backends(model: str = "smollm2", new_tokens: int = 64, runs: int = 3) -> dict:
    """Measure every backend on the whole model in this process.

    Returns:
        ``{"torch_fp32_tok_s", "onnx_fp32_tok_s", "onnx_int8_tok_s", "torch_int8_tok_s",
        "default_backend", "default_reason", "ppl": {...}, "weight_bytes": {...}, "ratios": {...}}``.
    """
    from swarmnode.models import Checkpoint, load_client_head, load_span, resolve_model
    from swarmnode.runtime import TorchBackend
    from swarmnode.runtime.onnx_backend import OnnxBackend
    from swarmnode.runtime.planning import build_backend

    checkpoint = Checkpoint(resolve_model(model))
    tokenizer = checkpoint.tokenizer()
    head = load_client_head(checkpoint)
    span = load_span(checkpoint, 0, checkpoint.num_blocks)
    messages = [{"role": "user", "content": DEFAULT_PROMPT}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    ppl_ids = tokenizer(PPL_TEXT, return_tensors="pt")["input_ids"]

    backends = {
        "torch_fp32": TorchBackend(span),
        "onnx_fp32": OnnxBackend(span, "float32"),
        "onnx_int8": OnnxBackend(span, "int8"),
        "torch_int8": TorchInt8Backend(load_span(checkpoint, 0, checkpoint.num_blocks)),
    }

    class _Clock:
        def __init__(self):
            self.n, self.first = 0, 0.0

        def put(self, _):
            self.n += 1
            if self.n == 2:
                self.first = time.perf_counter()

        def end(self):
            pass

    # The reference the ratios stand for: transformers' own generate (PyTorch fp32 eager), same rounds.
    from transformers import AutoModelForCausalLM

    local = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=torch.float32).eval()
    opts = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    reference: list[float] = []

    def run_reference() -> None:
        clock = _Clock()
        with torch.inference_mode():
            local.generate(ids, streamer=clock, **opts)
        reference.append((new_tokens - 1) / (time.perf_counter() - clock.first))

    speeds: dict[str, list[float]] = {k: [] for k in backends}
    tokens: dict[str, list[int]] = {}
    # ONNX Runtime backends compute logits on ONNX Runtime too; the PyTorch ones on PyTorch (as transformers).
    head.enable_onnx()
    fast = {name: name.startswith("onnx") for name in backends}
    for name, b in backends.items():
        local_backend_generate(b, head, ids, 4, fast_head=fast[name])  # warm-up
    with torch.inference_mode():
        local.generate(ids, **{**opts, "max_new_tokens": 4, "min_new_tokens": 4})
    for _ in range(runs):
        run_reference()
        for name, b in backends.items():
            clock = _Clock()
            tokens[name] = local_backend_generate(b, head, ids, new_tokens, clock, fast_head=fast[name])
            speeds[name].append((new_tokens - 1) / (time.perf_counter() - clock.first))
    tok_s = {k: statistics.median(v) for k, v in speeds.items()}
    default, reason = build_backend(load_span(checkpoint, 0, 10), "cpu", "float32")
    bf16_span = load_span(checkpoint, 0, checkpoint.num_blocks, torch.bfloat16)
    first32 = {
        k: sum(a == b for a, b in zip(v[:32], tokens["torch_fp32"][:32], strict=True)) for k, v in tokens.items()
    }
    return {
        "model": model,
        "new_tokens": new_tokens,
        **{f"{k}_tok_s": round(v, 2) for k, v in tok_s.items()},
        "ratios_vs_torch_fp32": {k: round(v / tok_s["torch_fp32"], 3) for k, v in tok_s.items()},
        "transformers_generate_tok_s": round(statistics.median(reference), 2),
        "onnx_fp32_vs_transformers": round(tok_s["onnx_fp32"] / statistics.median(reference), 3),
        "default_backend": default.name,
        "default_reason": reason,
        "ppl": {
            **{k: round(perplexity(b, head, ppl_ids), 3) for k, b in backends.items()},
            "torch_bf16": round(perplexity(TorchBackend(bf16_span, dtype=torch.bfloat16), head, ppl_ids), 3),
        },
        "weight_bytes": {k: int(b.weight_bytes) for k, b in backends.items()},
        "first32_tokens_equal_to_torch_fp32": first32,
    }
