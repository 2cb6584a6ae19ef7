"""The ONNX Runtime backend: the span exported once, cached on disk, run on CPU.

Decoding a span on CPU is bound by per-op overhead and memory traffic; ONNX Runtime fuses the
graph and skips Python entirely, which measured about 2.4x faster than PyTorch eager here.
Sessions at different positions can share one batch (each row's padding is masked out).

The files (export, fused build, int8, on-disk cache) are in :mod:`swarmnode.runtime.onnx_files`,
the session and its IO binding in :mod:`swarmnode.runtime.onnx_runner`, the key/value buffers in
:mod:`swarmnode.runtime.onnx_buffers`; this module holds the backend's step API.
"""

from __future__ import annotations

import numpy as np
import torch

from swarmnode.models.span import SpanModel
from swarmnode.models.wire import array_to_wire
from swarmnode.protocol import WireTensor
from swarmnode.protocol.compare import to_float32  # a writable float32 copy, through NumPy
from swarmnode.runtime.graph import SpanGraph, UnsupportedForGraph, causal_mask
from swarmnode.runtime.onnx_buffers import BatchBuffers, OnnxCache, capacity_for
from swarmnode.runtime.onnx_files import (
    OPSET,
    export_span,
    exported_span,
    fused_span,
    quantize_int8,
    span_digest,
    span_file,
    weight_bytes,
)
from swarmnode.runtime.onnx_runner import SpanRunner

# The file functions and OnnxCache stay importable from here (portal.swarm.browser_node and the tests
# import OPSET, span_digest, exported_span and fused_span from this module).
__all__ = [
    "OPSET",
    "OnnxBackend",
    "OnnxCache",
    "export_span",
    "exported_span",
    "fused_span",
    "quantize_int8",
    "span_digest",
]


class OnnxBackend:
    """Run a span with ONNX Runtime on CPU.

    Args:
        span: the loaded blocks (exported on first use; the torch weights can be dropped after).
        precision: ``float32`` or ``int8`` (weight-only int8, ONNX Runtime).
        threads: intra-op threads.
        spin: let worker threads spin between the ops of one run (they stop spinning when the
            run ends, so the next node on a shared machine, or the client's head, gets the cores).
        fused: build the span from ONNX Runtime's fused kernels (in-place KV cache); ``None``
            uses them where the architecture allows and the portable export elsewhere.
    """

    name = "onnxruntime"
    device = "cpu"

    def __init__(
        self,
        span: SpanModel,
        precision: str = "float32",
        threads: int | None = None,
        spin: bool = True,
        fused: bool | None = None,
    ) -> None:
        self.precision = precision
        try:
            self.path, self.fused = span_file(span, precision, fused)
        except (UnsupportedForGraph, ImportError):
            raise
        except Exception as exc:  # an operator the exporter cannot write (e.g. MoE routing's histc)
            raise UnsupportedForGraph(f"{span.config.model_type}: export failed ({type(exc).__name__}: {exc})") from exc
        cfg = span.config
        self.num_layers = span.end - span.start
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = SpanGraph(span).head_dim
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 1 << 30))
        self.dtype = torch.float32
        self._weight_bytes: int | None = None
        self._batch = BatchBuffers(self.num_layers, self.num_kv, self.head_dim)
        self._runner = SpanRunner(self.path, self.num_layers, threads or torch.get_num_threads(), spin)
        self.session = self._runner.session
        self._check_parity(span)

    def _check_parity(self, span: SpanModel) -> None:
        """Refuse (:class:`UnsupportedForGraph`) a span whose graph does not compute what PyTorch computes
        on a probe: the backstop for architectures the graph's layout checks let through."""
        probe = torch.randn(1, 3, span.config.hidden_size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            expected = span(probe, span.new_cache())
        got = torch.from_numpy(to_float32(self.step(array_to_wire(probe.numpy(), "float32"), self.new_cache())))
        expected = expected.float().cpu()
        diff = float((got - expected).abs().max()) / max(float(expected.abs().max()), 1e-6)
        # int8 weights drift on a random probe as blocks add up: SmolLM2's 10 blocks 0.026, all 30 blocks 0.26
        # (the whole model in one process, as bench-backends runs it); a wrong graph is off by ~1.
        tolerance = 1e-3 if self.precision == "float32" else 0.5
        if not diff <= tolerance:
            raise UnsupportedForGraph(
                f"{span.config.model_type}: ONNX Runtime differs from PyTorch by {diff:.2g} (relative) on a probe"
            )

    @property
    def batches_prompts(self) -> bool:
        """Whether :meth:`step_batch` takes first prompts of different lengths in one padded pass
        (the fused graph: its attention kernel reads each row's own length)."""
        return self.fused

    @property
    def weight_bytes(self) -> int:
        """Bytes of the span's weights in the model file (the rotary position tables are not weights)."""
        if self._weight_bytes is None:
            self._weight_bytes = weight_bytes(self.path)
        return self._weight_bytes

    @property
    def rows_copied(self) -> int:
        """Sessions whose past was copied into the batch buffers (the rest were there already)."""
        return self._batch.rows_copied

    def new_cache(self, batch: int = 1) -> OnnxCache:
        """An empty cache."""
        cap = capacity_for(1) if self.fused else 0
        empty = np.zeros((self.num_layers, batch, self.num_kv, cap, self.head_dim), np.float32)
        return OnnxCache(empty, empty.copy())

    def step(self, hidden: WireTensor, cache: OnnxCache) -> WireTensor:
        """Run new positions through the span, appending to ``cache``."""
        x = to_float32(hidden)  # (B, T, H)
        b, t, _ = x.shape
        if cache.k.shape[1] != b:
            if cache.length:
                raise ValueError(f"batch size changed from {cache.k.shape[1]} to {b} within a session")
            fresh = self.new_cache(b)
            cache.k, cache.v = fresh.k, fresh.v
        p = cache.length
        if self.fused:
            cache.reserve(p + t, self.max_positions)
            out = self._runner.run_fused(x, cache.k, cache.v, [p] * b, slot=cache.binding)
            cache.version += 1
        else:
            positions = np.broadcast_to(np.arange(p, p + t, dtype=np.int64), (b, t)).copy()
            mask = causal_mask([p] * b, p, t).numpy()
            out, new_k, new_v = self._runner.run(x, cache.k, cache.v, positions, mask)
            cache.k = np.concatenate([cache.k, new_k], axis=3)
            cache.v = np.concatenate([cache.v, new_v], axis=3)
        cache.length = p + t
        return array_to_wire(out, hidden.dtype)

    def export_prefix(self, cache: OnnxCache, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the keys and values of ``cache``'s first ``n`` positions (a prompt prefix to reuse)."""
        return cache.k[:, :, :, :n].copy(), cache.v[:, :, :, :n].copy()

    def import_prefix(self, cache: OnnxCache, kv: tuple[np.ndarray, np.ndarray], n: int) -> None:
        """Fill an empty one-sequence ``cache`` with the first ``n`` positions of an exported prefix."""
        k, v = kv
        if cache.length or cache.k.shape[1] != 1 or k.shape[1] != 1 or k.shape[3] < n:
            raise ValueError("a prefix goes into an empty one-sequence cache, from a long enough export")
        if self.fused:
            cache.reserve(n, self.max_positions)
            cache.k[:, :, :, :n] = k[:, :, :, :n]
            cache.v[:, :, :, :n] = v[:, :, :, :n]
        else:
            cache.k, cache.v = k[:, :, :, :n].copy(), v[:, :, :, :n].copy()
        cache.length = n
        cache.version += 1

    def step_batch(self, items: list[tuple[WireTensor, OnnxCache]]) -> list[WireTensor]:
        """One pass for several sessions' one-sequence steps, each at its own position.

        Every item must be a ``(1, T, H)`` step with the same T; rows are right-padded to the
        longest past and the padding is never attended to. With the fused graph, first prompts
        (empty caches) may differ in length: they are right-padded to the longest (bit-identical
        to running each alone; see :attr:`batches_prompts`).
        """
        if len(items) == 1:
            return [self.step(*items[0])]
        news = [h.shape[1] for h, _ in items]
        t = max(news)
        lengths = [c.length for _, c in items]
        prompts = self.batches_prompts and max(lengths) == 0
        if any(h.shape[0] != 1 or (c.k.shape[1] != 1 and c.length) for h, c in items) or (
            min(news) != t and not prompts
        ):
            raise ValueError("a batch needs one sequence per session and the same number of new tokens")
        if self.fused and t > 1 and max(lengths) > 0:
            return [self.step(h, c) for h, c in items]
        x = np.zeros((len(items), t, items[0][0].shape[2]), np.float32)
        for row, (h, _) in enumerate(items):
            x[row, : news[row]] = to_float32(h)[0]
        caches = [c for _, c in items]
        if self.fused:
            out = self._fused_batch(x, caches, lengths, news)
        else:
            out = self._portable_batch(x, caches, lengths)
        return [array_to_wire(out[row : row + 1, : news[row]], h.dtype) for row, (h, _) in enumerate(items)]

    def _fused_batch(self, x: np.ndarray, caches: list[OnnxCache], lengths: list[int], news: list[int]) -> np.ndarray:
        """Run ``x (n, T, H)`` in the shared batch buffers; each cache gets its new keys and values."""
        t = x.shape[1]
        past_k, past_v, rows = self._batch.load(caches, max(lengths) + t)
        order = np.argsort(rows)  # item of each row
        out_rows = self._runner.run_fused(
            x[order], past_k, past_v, [lengths[i] for i in order], [news[i] for i in order], self._batch.binding
        )
        out = np.empty_like(out_rows)
        out[order] = out_rows
        for row, c, m in zip(rows, caches, news, strict=True):
            if c.k.shape[1] != 1:
                fresh = self.new_cache(1)
                c.k, c.v = fresh.k, fresh.v
            p = c.length
            c.reserve(p + m, self.max_positions)
            c.k[:, 0, :, p : p + m] = past_k[:, row, :, p : p + m]
            c.v[:, 0, :, p : p + m] = past_v[:, row, :, p : p + m]
            c.length = p + m
            c.version += 1
            self._batch.kept(row, c)
        return out

    def _portable_batch(self, x: np.ndarray, caches: list[OnnxCache], lengths: list[int]) -> np.ndarray:
        """Run ``x (n, T, H)`` with the pasts right-padded to the longest; each cache grows by T."""
        n, t = x.shape[0], x.shape[1]
        pmax = max(lengths)
        shape = (self.num_layers, n, self.num_kv, pmax, self.head_dim)
        past_k, past_v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        for row, c in enumerate(caches):
            past_k[:, row, :, : c.length] = c.k[:, 0]
            past_v[:, row, :, : c.length] = c.v[:, 0]
        positions = np.stack([np.arange(p, p + t, dtype=np.int64) for p in lengths])
        mask = causal_mask(lengths, pmax, t).numpy()
        out, new_k, new_v = self._runner.run(x, past_k, past_v, positions, mask)
        for row, c in enumerate(caches):
            c.k = np.concatenate([c.k, new_k[:, row : row + 1]], axis=3)
            c.v = np.concatenate([c.v, new_v[:, row : row + 1]], axis=3)
            c.length += t
        return out

    def forward(self, hidden: WireTensor) -> WireTensor:
        """Run positions 0..T-1 without a cache."""
        return self.step(hidden, self.new_cache())
