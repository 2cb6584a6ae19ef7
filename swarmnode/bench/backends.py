"""``swarmnode bench-backends``: every backend and precision on the whole model, one run.

Decoding tokens/s of all blocks (no network; each backend in a process of its own), perplexity of
a fixed text for each precision, and weight bytes, so speed and quality are read side by side.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

import torch

from swarmnode.bench.swarm import DEFAULT_PROMPT, _Clock, chat_prompt_ids, local_backend_generate

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
    from swarmnode.models.wire import tensor_to_wire, wire_to_tensor

    with torch.inference_mode():
        hidden = wire_to_tensor(backend.forward(tensor_to_wire(head.embed_tokens(ids))))
        logits = head.logits(hidden)[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    return math.exp(loss.item())


BACKENDS = ("torch_fp32", "onnx_fp32", "onnx_int8", "torch_int8")


def _measurer(kind: str, model: str, new_tokens: int):
    """Load one backend (or ``transformers``) and return ``(run, quality)`` closures for it.

    ``run()`` -> ``(decoding tok/s, greedy tokens)``; ``quality()`` -> ``{"ppl": {...}, "weight_bytes": {...}}``.
    """
    from swarmnode.client.head import load_client_head
    from swarmnode.models import Checkpoint, load_span, resolve_model
    from swarmnode.runtime import TorchBackend

    checkpoint = Checkpoint(resolve_model(model))
    ids = chat_prompt_ids(checkpoint.tokenizer(), DEFAULT_PROMPT)
    if kind == "transformers":
        # The reference the ratios stand for: transformers' own generate (PyTorch fp32 eager).
        from transformers import AutoModelForCausalLM

        local = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=torch.float32, local_files_only=True).eval()
        opts = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

        def run(count: int = new_tokens):
            clock = _Clock()
            with torch.inference_mode():
                out = local.generate(ids, streamer=clock, **{**opts, "max_new_tokens": count, "min_new_tokens": count})
            return (count - 1) / (time.perf_counter() - clock.first), out[0, ids.shape[1] :].tolist()

        return run, lambda: {"ppl": {}, "weight_bytes": {}}

    head = load_client_head(checkpoint)
    whole = load_span(checkpoint, 0, checkpoint.num_blocks)
    if kind == "fp32_memory_bound":
        return _memory_bound(whole, head, new_tokens), lambda: {"ppl": {}, "weight_bytes": {}}
    fast_head = kind.startswith("onnx")  # ONNX Runtime backends compute logits on ONNX Runtime too
    if fast_head:
        from swarmnode.runtime.onnx_backend import OnnxBackend

        head.enable_onnx()
        backend = OnnxBackend(whole, "int8" if kind == "onnx_int8" else "float32")
    elif kind == "torch_int8":
        backend = TorchInt8Backend(whole)
    else:
        backend = TorchBackend(whole)

    def run(count: int = new_tokens):
        clock = _Clock()
        out = local_backend_generate(backend, head, ids, count, clock, fast_head=fast_head)
        return (count - 1) / (time.perf_counter() - clock.first), out

    def quality() -> dict:
        ppl_ids = checkpoint.tokenizer()(PPL_TEXT, return_tensors="pt")["input_ids"]
        result = {"ppl": {kind: perplexity(backend, head, ppl_ids)}, "weight_bytes": {kind: int(backend.weight_bytes)}}
        if kind == "torch_fp32":
            bf16 = TorchBackend(load_span(checkpoint, 0, checkpoint.num_blocks, torch.bfloat16), dtype=torch.bfloat16)
            result["ppl"]["torch_bf16"] = perplexity(bf16, head, ppl_ids)
        return result

    return run, quality


def _memory_bound(whole, head, new_tokens: int):
    """``run()`` for the fp32 ceiling of batch-1 decoding on this machine: per token, read as many bytes
    as all weight matrices a token needs (every block's and the LM head's) in the most memory-friendly
    way there is, over one contiguous buffer of that size, and nothing else.

    Batch-1 decoding must read each weight once per token, so for a model far larger than the CPU's
    caches (SmolLM2's 538 MB) no fp32 backend can decode faster than this on this machine's memory;
    the figure tells how much room a goal like "2x PyTorch" leaves. (A model that fits in the caches is
    bound by other things, and backends may then beat this figure.)

    The buffer is read two ways, a matrix-vector product and a multi-threaded row sum (the same bytes,
    one add per weight instead of a multiply-add), and the faster one is the ceiling: PyTorch's CPU
    matrix-vector product read only ~15 GB/s on a 2-core AMD EPYC, where its row sum read ~35 GB/s, so a
    mat-vec alone gave a "ceiling" (28-31 tok/s) below what ONNX Runtime decodes (~40 tok/s).
    """
    count = sum(m.weight.numel() for m in whole.modules() if isinstance(m, torch.nn.Linear))
    count += head.lm_head.weight.numel()
    del whole, head
    width = 4096
    weights = torch.randn(-(-count // width), width)
    vector = torch.randn(width)
    reads = (lambda: weights @ vector, lambda: weights.sum(dim=1))

    def speed(read, tokens: int) -> float:
        with torch.inference_mode():
            began = time.perf_counter()
            for _ in range(tokens):
                read()
            return tokens / (time.perf_counter() - began)

    def run(tokens: int = new_tokens):
        return max(speed(read, tokens) for read in reads), []

    return run


def _worker(kind: str, model: str, new_tokens: int, conn) -> None:
    """One measuring process: loads ``kind``, warms up, then answers ``run``/``quality`` until ``stop``."""
    try:
        run, quality = _measurer(kind, model, new_tokens)
        run(4)  # warm-up
        conn.send(("ready", None))
        for command in iter(conn.recv, "stop"):
            conn.send(("ok", run() if command == "run" else quality()))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which names the backend
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class _Process:
    """A measuring child process and its end of the pipe."""

    def __init__(self, ctx, kind: str, model: str, new_tokens: int) -> None:
        self.kind = kind
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(kind, model, new_tokens, child), daemon=True)
        self.process.start()
        child.close()

    def call(self, command: str | None = None):
        if command is not None:
            self.conn.send(command)
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            code = self.process.exitcode
            raise RuntimeError(f"bench-backends: the {self.kind} process died (exit code {code})") from None
        if status == "error":
            raise RuntimeError(f"bench-backends: {self.kind} failed: {value}")
        return value

    def stop(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def run_bench_backends(model: str = "smollm2", new_tokens: int = 64, runs: int = 3) -> dict:
    """Measure every backend on the whole model, each in its own process, taking turns.

    Each backend (and ``transformers`` ``generate``, the reference) runs in a process of its own so
    that no other runtime's thread pool shares its address space (PyTorch's OpenMP threads spin
    after each op and slowed ONNX Runtime beside them by up to ~15 %); the processes measure one at
    a time, in interleaved rounds, while the others wait idle.

    Returns:
        ``{"torch_fp32_tok_s", "onnx_fp32_tok_s", "onnx_int8_tok_s", "torch_int8_tok_s",
        "default_backend", "default_reason", "ppl": {...}, "weight_bytes": {...}, "ratios": {...}}``, and
        ``fp32_memory_bound_tok_s``: the speed of reading every fp32 weight once per token and doing
        nothing else (a ceiling no fp32 backend passes on this machine, see :func:`_memory_bound`).
    """
    import multiprocessing

    from swarmnode.models import Checkpoint, load_span, resolve_model
    from swarmnode.runtime.planning import build_backend

    ctx = multiprocessing.get_context("spawn")
    kinds = ("transformers", *BACKENDS, "fp32_memory_bound")
    procs = [_Process(ctx, kind, model, new_tokens) for kind in kinds]
    speeds: dict[str, list[float]] = {k: [] for k in kinds}
    tokens: dict[str, list[int]] = {}
    ppl: dict[str, float] = {}
    weight_bytes: dict[str, int] = {}
    try:
        for p in procs:
            p.call()  # ready (they load and warm up side by side)
        for _ in range(runs):
            for p in procs:
                tok_s, tokens[p.kind] = p.call("run")
                speeds[p.kind].append(tok_s)
        for p in procs:
            q = p.call("quality")
            ppl.update(q["ppl"])
            weight_bytes.update(q["weight_bytes"])
    finally:
        for p in procs:
            p.stop()
    tok_s = {k: statistics.median(v) for k, v in speeds.items()}
    reference = tok_s.pop("transformers")
    # What a node on this CPU would choose (the same start-up timing the node runs), measured alone.
    checkpoint = Checkpoint(resolve_model(model))
    default, reason = build_backend(load_span(checkpoint, 0, min(10, checkpoint.num_blocks)), "cpu", "float32")
    first32 = {k: sum(a == b for a, b in zip(tokens[k][:32], tokens["torch_fp32"][:32], strict=True)) for k in BACKENDS}
    return {
        "model": model,
        "new_tokens": new_tokens,
        **{f"{k}_tok_s": round(v, 2) for k, v in tok_s.items()},
        "ratios_vs_torch_fp32": {k: round(v / tok_s["torch_fp32"], 3) for k, v in tok_s.items()},
        "transformers_generate_tok_s": round(reference, 2),
        "onnx_fp32_vs_transformers": round(tok_s["onnx_fp32"] / reference, 3),
        "default_backend": default.name,
        "default_reason": reason,
        "ppl": {k: round(v, 3) for k, v in ppl.items()},
        "weight_bytes": weight_bytes,
        "first32_tokens_equal_to_torch_fp32": first32,
        "transformers_tokens_equal_to_torch_fp32": tokens["transformers"] == tokens["torch_fp32"],
        "measured": "each backend in its own process, one at a time, interleaved rounds (medians)",
    }
