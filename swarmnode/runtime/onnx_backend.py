"""The ONNX Runtime backend: the span exported once, cached on disk, run on CPU.

Decoding a span on CPU is bound by per-op overhead and memory traffic; ONNX Runtime fuses the
graph and skips Python entirely, which measured about 2.4x faster than PyTorch eager here.
Sessions at different positions can share one batch (each row's padding is masked out).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from swarmnode.models.cachefiles import atomic_write, save_onnx_once
from swarmnode.models.registry import layerswarm_home
from swarmnode.models.span import SpanModel
from swarmnode.models.wire import array_to_wire
from swarmnode.protocol import WireTensor
from swarmnode.protocol.compare import to_float32  # a writable float32 copy, through NumPy
from swarmnode.runtime.graph import GRAPH_VERSION, SpanGraph, causal_mask

log = logging.getLogger("swarmnode.onnx")

OPSET = 17
_INPUTS = ["hidden", "past_k", "past_v", "position_ids", "attn_mask"]
_OUTPUTS = ["out", "new_k", "new_v"]


def span_digest(span: SpanModel, extra: str = "") -> str:
    """Content hash of a span: its weights, its config and the exporter's versions."""
    h = hashlib.sha256()
    meta = {
        "graph": GRAPH_VERSION,
        "opset": OPSET,
        "torch": torch.__version__.split("+")[0],
        "config": span.config.to_diff_dict(),
        "extra": extra,
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in sorted(span.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().contiguous().cpu()
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()[:24]


def export_span(span: SpanModel, path: Path) -> Path:
    """Export ``span`` as a :class:`SpanGraph` with dynamic batch, token and past axes."""
    graph = SpanGraph(span).eval()
    cfg = span.config
    n, kv, d = len(graph.layers), cfg.num_key_value_heads, graph.head_dim
    hidden = torch.zeros(1, 2, cfg.hidden_size)
    past = torch.zeros(n, 1, kv, 3, d)
    args = (hidden, past, past, torch.tensor([[3, 4]]), causal_mask([3], 3, 2))
    dynamic = {
        "hidden": {0: "batch", 1: "tokens"},
        "past_k": {1: "batch", 3: "past"},
        "past_v": {1: "batch", 3: "past"},
        "position_ids": {0: "batch", 1: "tokens"},
        "attn_mask": {0: "batch", 2: "tokens", 3: "total"},
        "out": {0: "batch", 1: "tokens"},
        "new_k": {1: "batch", 3: "tokens"},
        "new_v": {1: "batch", 3: "tokens"},
    }
    with atomic_write(path) as tmp, torch.inference_mode():
        torch.onnx.export(
            graph,
            args,
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=_INPUTS,
            output_names=_OUTPUTS,
            dynamic_axes=dynamic,
        )
    return path


def quantize_int8(src: Path, dst: Path) -> Path:
    """Weight-only int8: every MatMul weight in blocks of 128 with its own scale (MatMulNBits).

    Classic dynamic int8 also quantizes activations per tensor; this model's hidden states carry
    outliers in the hundreds and that destroyed it (perplexity in the millions). Weights alone
    keep perplexity within about 2% of fp32; ``accuracy_level=4`` lets ONNX Runtime multiply in
    int8 with per-block activation scales, which is what makes it faster than fp32.
    """
    import logging as _logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    _logging.getLogger("onnxruntime.quantization").setLevel(_logging.WARNING)
    quantizer = MatMulNBitsQuantizer(str(src), bits=8, block_size=128, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    with atomic_write(dst) as tmp:
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
    return dst


def exported_span(span: SpanModel, precision: str = "float32") -> Path:
    """The span's portable ONNX file (``torch.onnx`` export of :class:`SpanGraph`, standard ops only).

    This is the file browsers run with onnxruntime-web; nodes prefer :func:`fused_span`.
    """
    cache = layerswarm_home() / "onnx"
    digest = span_digest(span)
    fp32 = cache / f"span-{digest}.onnx"
    if not fp32.exists():
        log.info("exporting blocks %d:%d to ONNX (cached as %s)", span.start, span.end, fp32.name)
        export_span(span, fp32)
    return _precision_variant(fp32, precision, span)


def fused_span(span: SpanModel, precision: str = "float32") -> Path:
    """The span's ONNX file built from ONNX Runtime's fused kernels (:mod:`swarmnode.runtime.onnx_graph`).

    Raises:
        UnsupportedForGraph: the architecture has parts the builder does not express.
    """
    from swarmnode.runtime.onnx_graph import FUSED_GRAPH_VERSION, build_span_graph, check_supported

    check_supported(span)
    cache = layerswarm_home() / "onnx"
    digest = span_digest(span, extra=f"fused{FUSED_GRAPH_VERSION}")
    fp32 = cache / f"span-{digest}-fused.onnx"
    if not fp32.exists():
        log.info("building blocks %d:%d as a fused ONNX graph (cached as %s)", span.start, span.end, fp32.name)
    save_onnx_once(fp32, lambda: build_span_graph(span))
    return _precision_variant(fp32, precision, span)


def _precision_variant(fp32: Path, precision: str, span: SpanModel) -> Path:
    if precision == "float32":
        return fp32
    if precision == "int8":
        int8 = fp32.with_name(fp32.stem + "-int8w.onnx")
        if not int8.exists():
            log.info("quantizing blocks %d:%d to int8", span.start, span.end)
            quantize_int8(fp32, int8)
        return int8
    raise ValueError(f"the ONNX backend supports float32 and int8, not {precision!r}")


@dataclass
class OnnxCache:
    """A session's keys and values, ``(L, B, KV, capacity, D)`` each; the first ``length`` positions hold data.

    The fused graph reads and writes these buffers in place (they grow by doubling); the
    portable graph's cache holds exactly ``length`` positions.
    """

    k: np.ndarray
    v: np.ndarray
    length: int = 0
    extra: dict = field(default_factory=dict)
    version: int = 0  # bumped by every write: a batch buffer's copy of this cache is current only at its version
    binding: dict = field(default_factory=dict, repr=False, compare=False)  # ONNX Runtime's binding of k/v

    def __deepcopy__(self, memo: dict) -> OnnxCache:
        """A copy with its own buffers (and no binding: that one points at this cache's buffers)."""
        return OnnxCache(self.k.copy(), self.v.copy(), self.length, copy.deepcopy(self.extra, memo), self.version)

    @property
    def capacity(self) -> int:
        """Positions the buffers can hold."""
        return self.k.shape[3]


def _capacity_for(needed: int, current: int = 0) -> int:
    cap = max(64, current)
    while cap < needed:
        cap *= 2
    return cap


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
        import onnxruntime as ort

        from swarmnode.runtime.graph import UnsupportedForGraph

        self.precision = precision
        self.fused = False
        if fused is not False:
            try:
                self.path = fused_span(span, precision)
                self.fused = True
            except UnsupportedForGraph as exc:
                if fused:
                    raise
                log.info("fused graph unavailable for this span (%s); using the portable export", exc)
        if not self.fused:
            self.path = exported_span(span, precision)
        cfg = span.config
        self.num_layers = span.end - span.start
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = SpanGraph(span).head_dim
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 1 << 30))
        self.dtype = torch.float32
        self._weight_bytes: int | None = None
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None
        # Per row of the batch buffers: which cache it holds a copy of, as (weak reference, version),
        # so a session batched in the same row again needs no copy of its past.
        self._rows: list[tuple[weakref.ref, int] | None] = []
        self._batch_io: dict = {}  # the batch buffers' IO binding (see _kv_binding)
        self.rows_copied = 0  # sessions whose past was copied into the batch buffers (the rest were there)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        self._ort = ort
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    @property
    def batches_prompts(self) -> bool:
        """Whether :meth:`step_batch` takes first prompts of different lengths in one padded pass
        (the fused graph: its attention kernel reads each row's own length)."""
        return self.fused

    @property
    def weight_bytes(self) -> int:
        """Bytes of the span's weights in the model file (the rotary position tables are not weights)."""
        if self._weight_bytes is None:
            import onnx

            model = onnx.load(str(self.path), load_external_data=False)
            tables = sum(len(t.raw_data) for t in model.graph.initializer if t.name in ("cos_cache", "sin_cache"))
            self._weight_bytes = self.path.stat().st_size - tables
        return self._weight_bytes

    def new_cache(self, batch: int = 1) -> OnnxCache:
        """An empty cache."""
        cap = _capacity_for(1) if self.fused else 0
        empty = np.zeros((self.num_layers, batch, self.num_kv, cap, self.head_dim), np.float32)
        return OnnxCache(empty, empty.copy())

    # -- the fused graph: buffers updated in place --------------------------------------------

    def _reserve(self, cache: OnnxCache, needed: int) -> None:
        """Grow ``cache``'s buffers to hold ``needed`` positions."""
        if needed <= cache.capacity:
            return
        if needed > self.max_positions:
            raise ValueError(f"position {needed} is past the model's {self.max_positions}")
        cap = min(_capacity_for(needed, cache.capacity), max(needed, self.max_positions))
        shape = (*cache.k.shape[:3], cap, self.head_dim)
        k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        k[:, :, :, : cache.length] = cache.k[:, :, :, : cache.length]
        v[:, :, :, : cache.length] = cache.v[:, :, :, : cache.length]
        cache.k, cache.v = k, v

    def _batch_buffers(self, rows: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values ``(L, rows, KV, S >= positions, D)`` for a batched pass, reused from pass to pass.

        Fresh buffers of this size cost more in page faults than the pass's copies; stale
        positions past a row's length are never attended to (each row has its own length).
        """
        have = self._scratch
        if have is None or have[0].shape[1] < rows or have[0].shape[3] < positions:
            most = max(rows, have[0].shape[1] if have is not None else 0)
            cap = _capacity_for(positions, have[0].shape[3] if have is not None else 0)
            shape = (self.num_layers, most, self.num_kv, cap, self.head_dim)
            have = self._scratch = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
            self._rows = [None] * most
        return have[0][:, :rows], have[1][:, :rows]

    def _holds(self, row: int, cache: OnnxCache) -> bool:
        """Whether batch row ``row`` holds ``cache``'s current keys and values."""
        held = self._rows[row]
        return held is not None and held[0]() is cache and held[1] == cache.version

    def _place(self, caches: list[OnnxCache]) -> list[int]:
        """Rows ``0..n-1`` of the batch buffers for ``caches``: a cache keeps the row that still holds
        its current keys and values; the rest take the free rows. Returns each cache's row."""
        n = len(caches)
        rows: list[int | None] = [None] * n
        taken: set[int] = set()
        for i, c in enumerate(caches):
            for r in range(n):
                if r not in taken and self._holds(r, c):
                    rows[i] = r
                    taken.add(r)
                    break
        free = iter(r for r in range(n) if r not in taken)
        return [r if r is not None else next(free) for r in rows]

    def _kv_binding(self, k: np.ndarray, v: np.ndarray, slot: dict | None):
        """An IO binding with every layer's keys/values bound in place to ``k``/``v``; kept in ``slot``
        (a cache's or the batch buffers') and reused while the buffers stay the same."""
        ident = (k.ctypes.data, v.ctypes.data, k.shape)
        held = slot.get("io") if slot is not None else None
        if held is not None and held[0] == ident:
            return held[1]
        io = self.session.io_binding()
        ort_value = self._ort.OrtValue.ortvalue_from_numpy
        values = []  # the OrtValues reference the numpy buffers: kept alive with the binding
        for i in range(self.num_layers):
            kv, vv = ort_value(k[i]), ort_value(v[i])
            values += [kv, vv]
            io.bind_ortvalue_input(f"past_key_{i}", kv)
            io.bind_ortvalue_output(f"present_key_{i}", kv)
            io.bind_ortvalue_input(f"past_value_{i}", vv)
            io.bind_ortvalue_output(f"present_value_{i}", vv)
        if slot is not None:
            slot["io"] = (ident, io, values)
        return io

    def _run_fused(
        self,
        x: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        lengths: list[int],
        news: list[int] | None = None,
        slot: dict | None = None,
    ) -> np.ndarray:
        """Run ``x (B, T, H)`` with rows' pasts ``lengths``; new keys/values land in ``k``/``v`` in place.

        ``news``: each row's real new tokens when rows are right-padded to T (first prompts only).
        ``slot``: where the binding of ``k``/``v`` is kept between passes.
        """
        b, t, h = x.shape
        news = news or [t] * b
        if b > 1 and t > 1 and max(lengths) > 0:  # the kernel takes several new tokens after a past one row at a time
            return np.concatenate(
                [self._run_fused(x[r : r + 1], k[:, r : r + 1], v[:, r : r + 1], lengths[r : r + 1]) for r in range(b)]
            )
        io = self._kv_binding(k, v, slot)
        x = np.ascontiguousarray(x, np.float32)
        io.bind_cpu_input("hidden", x)
        io.bind_cpu_input("seqlens_k", np.array([p + m - 1 for p, m in zip(lengths, news, strict=True)], np.int32))
        io.bind_cpu_input("total_len", np.array(max(lengths) + t, np.int32))
        out = np.empty((b, t, h), np.float32)
        io.bind_output("out", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self.session.run_with_iobinding(io)
        return out

    # -- the portable graph: pasts concatenated -------------------------------------------------

    def _run(self, x: np.ndarray, past_k, past_v, positions: np.ndarray, mask: np.ndarray):
        out, new_k, new_v = self.session.run(
            None, {"hidden": x, "past_k": past_k, "past_v": past_v, "position_ids": positions, "attn_mask": mask}
        )
        return out, new_k, new_v

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
            self._reserve(cache, p + t)
            out = self._run_fused(x, cache.k, cache.v, [p] * b, slot=cache.binding)
            cache.version += 1
        else:
            positions = np.broadcast_to(np.arange(p, p + t, dtype=np.int64), (b, t)).copy()
            mask = causal_mask([p] * b, p, t).numpy()
            out, new_k, new_v = self._run(x, cache.k, cache.v, positions, mask)
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
            self._reserve(cache, n)
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
        pmax = max(lengths)
        n = len(items)
        x = np.zeros((n, t, items[0][0].shape[2]), np.float32)
        for row, (h, _) in enumerate(items):
            x[row, : news[row]] = to_float32(h)[0]
        if self.fused:
            past_k, past_v = self._batch_buffers(n, pmax + t)
            caches = [c for _, c in items]
            rows = self._place(caches)
            for row, c in zip(rows, caches, strict=True):
                if not self._holds(row, c):  # not there yet: copy its past in
                    self.rows_copied += 1
                    past_k[:, row, :, : c.length] = c.k[:, 0, :, : c.length]
                    past_v[:, row, :, : c.length] = c.v[:, 0, :, : c.length]
            order = np.argsort(rows)  # item of each row
            out_rows = self._run_fused(
                x[order], past_k, past_v, [lengths[i] for i in order], [news[i] for i in order], self._batch_io
            )
            out = np.empty_like(out_rows)
            out[order] = out_rows
            for row, c, m in zip(rows, caches, news, strict=True):
                if c.k.shape[1] != 1:
                    fresh = self.new_cache(1)
                    c.k, c.v = fresh.k, fresh.v
                p = c.length
                self._reserve(c, p + m)
                c.k[:, 0, :, p : p + m] = past_k[:, row, :, p : p + m]
                c.v[:, 0, :, p : p + m] = past_v[:, row, :, p : p + m]
                c.length = p + m
                c.version += 1
                self._rows[row] = (weakref.ref(c), c.version)
        else:
            shape = (self.num_layers, n, self.num_kv, pmax, self.head_dim)
            past_k, past_v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
            for row, (_, c) in enumerate(items):
                past_k[:, row, :, : c.length] = c.k[:, 0]
                past_v[:, row, :, : c.length] = c.v[:, 0]
            positions = np.stack([np.arange(p, p + t, dtype=np.int64) for p in lengths])
            mask = causal_mask(lengths, pmax, t).numpy()
            out, new_k, new_v = self._run(x, past_k, past_v, positions, mask)
            for row, (_, c) in enumerate(items):
                c.k = np.concatenate([c.k, new_k[:, row : row + 1]], axis=3)
                c.v = np.concatenate([c.v, new_v[:, row : row + 1]], axis=3)
                c.length += t
        return [array_to_wire(out[row : row + 1, : news[row]], h.dtype) for row, (h, _) in enumerate(items)]

    def forward(self, hidden: WireTensor) -> WireTensor:
        """Run positions 0..T-1 without a cache."""
        return self.step(hidden, self.new_cache())
