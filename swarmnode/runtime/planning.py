"""Fitting a node to its hardware: device, precision, backend, and how many blocks fit.

Choices are made once at start-up and logged with their reason; the node announces the
result (``backend`` and ``dtype`` in its Info reply).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

import humanfriendly
import torch

from swarmnode.models.checkpoint import Checkpoint
from swarmnode.models.span import SpanModel, family_of
from swarmnode.models.wire import tensor_to_wire
from swarmnode.protocol import WireTensor
from swarmnode.runtime.backend import TorchBackend

log = logging.getLogger("swarmnode.planning")

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


class DoesNotFit(ValueError):
    """The requested blocks (or even one block) do not fit the memory budget."""


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``.

    Raises:
        ValueError: CUDA was asked for but torch sees no GPU.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but PyTorch sees no CUDA GPU")
    return device


def resolve_precision(device: str, precision: str) -> tuple[str, str]:
    """Pick the compute precision for the hardware; returns ``(precision, reason)``.

    ``auto``: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU.
    """
    if precision != "auto":
        if precision == "int8" and device != "cpu":
            raise ValueError("int8 is offered on CPU (ONNX Runtime); no maintained int8 kernel library on this stack")
        return precision, "requested"
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return "bfloat16", f"{torch.cuda.get_device_name(device)} supports bf16"
        return "float16", f"{torch.cuda.get_device_name(device)} has no bf16"
    return "float32", "CPU: fp32 keeps exact parity and is fastest at batch 1"


def parse_bytes(text: str) -> int:
    """``"2GB"``, ``"512MiB"``, ``"1.5G"`` or plain bytes to an integer (decimal units; ``i`` for binary).

    Raises:
        ValueError: not a size.
    """
    try:
        return int(humanfriendly.parse_size(text.strip()))
    except humanfriendly.InvalidSize as exc:
        raise ValueError(f"not a memory size: {text!r} (try 2GB or 512MiB)") from exc


def block_bytes(checkpoint: Checkpoint, precision: str) -> int:
    """Weight bytes of one block at ``precision`` (the largest block, to be safe)."""
    prefix = _blocks_prefix(checkpoint)
    sizes: dict[int, int] = {}
    from safetensors import safe_open

    for key in checkpoint.keys():
        if not key.startswith(prefix):
            continue
        index = int(key[len(prefix) :].split(".", 1)[0])
        with safe_open(checkpoint._files[key], framework="pt") as f:
            shape = f.get_slice(key).get_shape()
        n = 1
        for d in shape:
            n *= d
        sizes[index] = sizes.get(index, 0) + n
    return max(sizes.values()) * BYTES_PER_PARAM[precision]


def _blocks_prefix(checkpoint: Checkpoint) -> str:
    """The blocks' key prefix in the checkpoint: a decoder's, or an encoder's (``encoder.layer.``, ``bert.e...``)."""
    from swarmnode.models.encoder import encoder_structure
    from swarmnode.models.structure import UnsupportedArchitecture

    try:
        return family_of(checkpoint.config).layers_prefix
    except UnsupportedArchitecture:
        encoder = encoder_structure(checkpoint.config)
        if encoder is None:
            raise
        marker = encoder.blocks_path + "."
        key = next((k for k in checkpoint.keys() if k.startswith(marker) or f".{marker}" in k), marker)
        return key[: key.index(marker) + len(marker)]


def kv_bytes_per_token(checkpoint: Checkpoint, precision: str) -> int:
    """KV-cache bytes per token per block (keys + values; int8 nodes keep an fp32 cache; encoders keep none)."""
    from swarmnode.models.encoder import is_encoder_only
    from swarmnode.models.structure import kv_heads_and_dim

    if is_encoder_only(checkpoint.config):
        return 0
    kv, head_dim = kv_heads_and_dim(checkpoint.config)
    item = 4 if precision == "int8" else BYTES_PER_PARAM[precision]
    return 2 * kv * head_dim * item


@dataclass(frozen=True)
class MemoryPlan:
    """How many blocks fit a memory budget."""

    max_blocks: int
    block_bytes: int
    cache_bytes_per_block: int
    budget: int

    def explain(self, blocks: int) -> str:
        """One line for logs and errors."""
        need = blocks * (self.block_bytes + self.cache_bytes_per_block)
        return (
            f"{blocks} blocks need {need / 1e6:.0f} MB ({self.block_bytes / 1e6:.1f} MB weights + "
            f"{self.cache_bytes_per_block / 1e6:.1f} MB KV cache each); budget {self.budget / 1e6:.0f} MB"
        )


def plan_memory(checkpoint: Checkpoint, precision: str, max_memory: int, cache_tokens: int) -> MemoryPlan:
    """How many blocks fit ``max_memory`` bytes, keeping room for ``cache_tokens`` of KV cache.

    Raises:
        DoesNotFit: not even one block fits.
    """
    weights = block_bytes(checkpoint, precision)
    cache = kv_bytes_per_token(checkpoint, precision) * cache_tokens
    plan = MemoryPlan(min(checkpoint.num_blocks, max_memory // (weights + cache)), weights, cache, max_memory)
    if plan.max_blocks < 1:
        raise DoesNotFit(f"not even one block fits: {plan.explain(1)}. Raise --max-memory or lower --cache-tokens.")
    return plan


def default_memory_budget(device: str) -> int:
    """Free GPU memory less 10%, or 80% of available RAM on CPU."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
    try:  # free pages on Linux, as measured since the first release
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return int(pages * size * 0.8)
    except (ValueError, OSError, AttributeError):  # macOS has no SC_AVPHYS_PAGES, Windows no sysconf
        pass
    try:
        import psutil  # a dependency of accelerate, on every platform

        return int(psutil.virtual_memory().available * 0.8)
    except ImportError:
        return 8 * 1024**3


AUTO_ROUNDS = 12  # decoding steps each backend takes (in turns) when --backend auto times them
AUTO_CONFIRMATIONS = 3  # timings in a row PyTorch must win on CPU before it replaces ONNX Runtime
AUTO_PAUSE_S = 1.0  # between those timings


def _decode_ms(candidates: list, hidden_size: int, past: int = 32, rounds: int = AUTO_ROUNDS) -> dict[str, float]:
    """Best time of a one-token decoding step on each backend, in ms.

    The backends take turns step by step, and each keeps its fastest step: a burst of load from
    elsewhere (other nodes starting on the same machine) slows whichever step it hits, not one
    backend's whole measurement, so it cannot make the slower backend look faster.
    """
    caches = []
    for backend in candidates:
        cache = backend.new_cache()
        backend.step(tensor_to_wire(torch.randn(1, past, hidden_size)), cache)
        caches.append(cache)
    x: WireTensor = tensor_to_wire(torch.randn(1, 1, hidden_size))
    best = {b.name: float("inf") for b in candidates}
    for r in range(rounds + 1):
        for backend, cache in zip(candidates, caches, strict=True):
            start = time.perf_counter()
            backend.step(x, cache)
            if r:  # the first round warms up
                best[backend.name] = min(best[backend.name], (time.perf_counter() - start) * 1000)
    return best


def decode_step_ms(backend, hidden_size: int, rounds: int = AUTO_ROUNDS) -> float:
    """Best time of a one-token decoding step on ``backend`` after a 32-position prompt, in ms (``doctor``)."""
    return _decode_ms([backend], hidden_size, rounds=rounds)[backend.name]


@contextlib.contextmanager
def _machine_turn(lock_path: str | None):
    """Hold the machine lock shared by the nodes of one machine (if any) while measuring."""
    if not lock_path:
        yield
        return
    from swarmnode.runtime.scheduler import MachineLock  # the same lock the scheduler takes around each pass

    lock = MachineLock(lock_path)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_backend(
    span: SpanModel,
    device: str,
    precision: str,
    backend: str = "auto",
    threads: int | None = None,
    small_step_threads: int | None = None,
    machine_lock: str | None = None,
):
    """Make the backend for a span; returns ``(backend, reason)``.

    ``auto`` is PyTorch on CUDA; on CPU it times decoding steps on PyTorch and on ONNX Runtime
    (taking turns, holding ``machine_lock`` when nodes share the machine) and keeps the faster
    one; PyTorch only once it won ``AUTO_CONFIRMATIONS`` timings in a row. int8 runs on ONNX Runtime.
    """
    torch_backend = lambda: TorchBackend(span, device, TORCH_DTYPES[precision], threads, small_step_threads)  # noqa: E731
    if backend == "torch":
        if precision == "int8":
            raise ValueError("int8 runs on the onnxruntime backend; use --backend onnxruntime or auto")
        return torch_backend(), "requested"
    if backend in ("onnxruntime", "onnx") or precision == "int8":
        if device != "cpu":
            raise ValueError("the onnxruntime backend runs on CPU here; use --backend torch on CUDA")
        from swarmnode.runtime.graph import UnsupportedForGraph
        from swarmnode.runtime.onnx_backend import OnnxBackend

        try:
            reason = "requested" if backend != "auto" else "int8 runs on ONNX Runtime"
            return OnnxBackend(span, precision, threads), reason
        except UnsupportedForGraph as exc:  # an architecture the graph does not express: PyTorch runs it
            if precision == "int8":
                raise
            log.warning("ONNX Runtime refused this span (%s); using PyTorch", exc)
            return torch_backend(), f"ONNX Runtime refused: {exc}"
    if backend != "auto":
        raise ValueError(f"unknown backend {backend!r}; use auto, torch or onnxruntime")
    if device != "cpu":
        return torch_backend(), "PyTorch on CUDA"
    if precision != "float32":
        return torch_backend(), f"{precision} on CPU runs on PyTorch"
    candidates = [torch_backend()]
    try:
        from swarmnode.runtime.onnx_backend import OnnxBackend

        candidates.append(OnnxBackend(span, precision, threads))
    except Exception as exc:  # an architecture the graph cannot express, or no onnxruntime
        log.warning("ONNX Runtime unavailable for this span (%s); using PyTorch", exc)
        return candidates[0], f"ONNX Runtime unavailable ({type(exc).__name__})"
    # ONNX Runtime's threads wait for each other at every op, so a burst of load from elsewhere (other
    # nodes loading and exporting their spans on this machine) slows it far more than PyTorch: about
    # one start in four timed it slower (19.4 vs 18.8 ms; 5-7 ms when the machine is quiet) and ran
    # the whole node 1.5x slower for its lifetime. So PyTorch must win several timings in a row.
    hidden = span.config.hidden_size
    rounds = []
    for attempt in range(AUTO_CONFIRMATIONS):
        if attempt:
            time.sleep(AUTO_PAUSE_S)
        with _machine_turn(machine_lock):
            timings = _decode_ms(candidates, hidden)
        rounds.append(", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()))
        best = min(candidates, key=lambda b: timings[b.name])
        if best is not candidates[0]:
            break
    reason = f"measured decoding step (best of {AUTO_ROUNDS}, taking turns): {'; then '.join(rounds)}"
    return best, reason
