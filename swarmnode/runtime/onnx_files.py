"""The span's ONNX files: exported (or built from fused kernels) once, cached on disk by content hash.

Files live in ``$LAYERSWARM_HOME/onnx`` under a digest of the span's weights, config and the
exporter's versions, so the same weights always map to the same file and a changed exporter
never reads a stale one. int8 variants sit next to their float32 source.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from swarmnode.models.cachefiles import atomic_write, save_onnx_once
from swarmnode.models.registry import layerswarm_home
from swarmnode.models.span import SpanModel
from swarmnode.runtime.graph import GRAPH_VERSION, SpanGraph, UnsupportedForGraph, causal_mask

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


def span_file(span: SpanModel, precision: str = "float32", fused: bool | None = None) -> tuple[Path, bool]:
    """The file a node runs for ``span``, and whether it is the fused graph.

    Args:
        span: the loaded blocks.
        precision: ``float32`` or ``int8``.
        fused: the fused graph (:func:`fused_span`); ``None``: it where the architecture allows,
            the portable export (:func:`exported_span`) elsewhere.

    Raises:
        UnsupportedForGraph: ``fused=True`` and the architecture has parts the builder does not express.
    """
    if fused is not False:
        try:
            return fused_span(span, precision), True
        except UnsupportedForGraph as exc:
            if fused:
                raise
            log.info("fused graph unavailable for this span (%s); using the portable export", exc)
    return exported_span(span, precision), False


def weight_bytes(path: Path) -> int:
    """Bytes of the span's weights in the model file at ``path`` (the rotary position tables are not weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    tables = sum(len(t.raw_data) for t in model.graph.initializer if t.name in ("cos_cache", "sin_cache"))
    return path.stat().st_size - tables
