"""``swarmnode bench``: the swarm against local ``transformers``, measured in one run."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


class _Clock:
    """A ``transformers`` streamer that notes when the first new token arrives."""

    def __init__(self) -> None:
        self.calls = 0
        self.first = 0.0

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def chat_prompt_ids(tokenizer, text: str) -> torch.Tensor:
    """``(1, T)`` token ids of ``text`` as one user turn of the model's chat template, ready to answer.

    A base model without a chat template (Gemma 3 270M) gets ``text`` itself, as a completion prompt.
    """
    if not tokenizer.chat_template:
        return tokenizer(text, return_tensors="pt")["input_ids"]
    messages = [{"role": "user", "content": text}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return ids["input_ids"]


def _timed(run, new_tokens: int) -> tuple[float, float, list[int]]:
    clock = _Clock()
    start = time.perf_counter()
    ids = run(clock)
    end = time.perf_counter()
    return (new_tokens - 1) / (end - clock.first), clock.first - start, ids


def local_backend_generate(
    backend, head, ids: torch.Tensor, new_tokens: int, streamer=None, fast_head: bool = False
) -> list[int]:
    """Greedy decoding of the whole model in this process through one backend (no network).

    ``fast_head``: logits on ONNX Runtime (``ClientHead.enable_onnx`` must have succeeded).
    """
    from swarmnode.client.generation import greedy_pick
    from swarmnode.models.wire import tensor_to_wire, wire_to_tensor

    cache = backend.new_cache()
    step_input, out = ids, []
    if streamer is not None:
        streamer.put(ids)
    with torch.inference_mode():
        for _ in range(new_tokens):
            hidden = wire_to_tensor(backend.step(tensor_to_wire(head.embed_tokens(step_input)), cache))
            token = greedy_pick(head.logits(hidden[:, -1:, :], fast=fast_head)[:, -1, :])  # as the swarm client
            out.append(int(token))
            if streamer is not None:
                streamer.put(token)
            step_input = token[:, None]
    return out


def run_bench(
    model: str = "smollm2",
    nodes: int = 3,
    new_tokens: int = 64,
    runs: int = 3,
    prompt: str = DEFAULT_PROMPT,
    backend: str = "auto",
    dtype: str | None = None,
    push: bool = False,
) -> dict:
    """Measure local decoding and the same greedy generation through ``nodes`` local processes.

    ``push``: the nodes forward each step's activations to the next node themselves (server-to-server).

    ``backend="auto"``: local ``transformers`` ``generate`` vs nodes on their default backend
    (on CPU the faster of ONNX Runtime and PyTorch, measured at start-up).
    ``backend="torch"``: local ``transformers`` ``generate`` vs PyTorch nodes (bit-exact parity).
    ``backend="onnxruntime"``: the whole model in one local ONNX Runtime session vs ONNX nodes.
    ``dtype``: the nodes' precision (``serve --dtype``, e.g. ``int8``); the local side stays fp32, and
    ``token_agreement`` / ``first_divergence`` say how far the swarm's greedy tokens follow it.

    Returns:
        ``{"local_tok_s", "swarm_tok_s", "ratio", "ttft_local_s", "ttft_swarm_s", "tokens_equal",
        "token_agreement", "first_divergence", ...}``;
        speeds are decoding tokens/s after the first token, medians over ``runs`` after a warm-up.
    """
    from transformers import AutoModelForCausalLM

    from swarmnode.client import AutoDistributedModelForCausalLM
    from swarmnode.client.head import load_client_head
    from swarmnode.launcher import LocalSwarm
    from swarmnode.models import Checkpoint, load_span, resolve_model

    path = resolve_model(model)
    checkpoint = Checkpoint(path)
    tokenizer = checkpoint.tokenizer()
    ids = chat_prompt_ids(tokenizer, prompt)
    opts = dict(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None)

    if backend in ("auto", "torch"):
        local = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
        local.eval()

        def run_local(streamer):
            with torch.inference_mode():
                out = local.generate(ids, min_new_tokens=new_tokens, pad_token_id=0, streamer=streamer, **opts)
            return out[0, ids.shape[1] :].tolist()
    else:
        from swarmnode.runtime.onnx_backend import OnnxBackend

        whole = OnnxBackend(load_span(checkpoint, 0, checkpoint.num_blocks), spin=True)
        head = load_client_head(checkpoint)
        head.enable_onnx()  # the swarm's client does the same with ONNX nodes (head_backend="auto")

        def run_local(streamer):
            return local_backend_generate(whole, head, ids, new_tokens, streamer, fast_head=True)

    node_args = ["--backend", backend] + (["--dtype", dtype] if dtype else [])
    node_backends: set[str] = set()
    with (
        tempfile.TemporaryDirectory() as logs,
        LocalSwarm(model, checkpoint.num_blocks, nodes, extra_args=node_args, log_dir=Path(logs)) as swarm,
    ):
        remote = AutoDistributedModelForCausalLM.from_pretrained(model, peers=swarm.urls, push=push)
        node_backends = {n.ready["backend"] for n in swarm.nodes}

        def run_swarm(streamer):
            out = remote.generate(ids, streamer=streamer, **opts)
            return out[0, ids.shape[1] :].tolist()

        results = {"local": [], "swarm": []}
        tokens = {}
        for fn in (run_local, run_swarm):
            fn(None)  # warm-up
        for _ in range(runs):  # interleave so drifting machine load hits both alike
            for name, fn in (("local", run_local), ("swarm", run_swarm)):
                tok_s, ttft, out = _timed(fn, new_tokens)
                results[name].append((tok_s, ttft))
                tokens[name] = out
    local_tok_s = statistics.median(r[0] for r in results["local"])
    swarm_tok_s = statistics.median(r[0] for r in results["swarm"])
    return {
        "model": model,
        "backend": backend,
        "node_backends": sorted(node_backends),
        "local": "transformers generate" if backend in ("auto", "torch") else "onnxruntime, whole model",
        "nodes": nodes,
        "new_tokens": new_tokens,
        "prompt_tokens": int(ids.shape[1]),
        "runs": runs,
        "local_tok_s": round(local_tok_s, 2),
        "swarm_tok_s": round(swarm_tok_s, 2),
        "ratio": round(swarm_tok_s / local_tok_s, 3),
        "ttft_local_s": round(statistics.median(r[1] for r in results["local"]), 4),
        "ttft_swarm_s": round(statistics.median(r[1] for r in results["swarm"]), 4),
        "tokens_equal": tokens["local"] == tokens["swarm"],
        **token_agreement(tokens["local"], tokens["swarm"]),
        "node_dtype": dtype or "default",
    }


def token_agreement(reference: list[int], other: list[int]) -> dict:
    """How far ``other`` follows ``reference``: the share of equal tokens position by position, and the
    index of the first difference (None when they are equal)."""
    pairs = list(zip(reference, other, strict=False))
    first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    if first is None and len(reference) != len(other):
        first = len(pairs)
    equal = sum(a == b for a, b in pairs)
    return {
        "token_agreement": round(equal / max(len(reference), len(other), 1), 4),
        "first_divergence": first,
    }
