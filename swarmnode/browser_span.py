"""A span as a browser node runs it: the ONNX file the ONNX Runtime backend exports, and its shape.

The public way for the portal (or any host of browser nodes) to get a span file without reaching
into ``swarmnode.runtime``: a Python ONNX node and a browser node of the same span run the same
graph, cached in ``$LAYERSWARM_HOME/onnx`` under the weights' digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class UnsupportedInBrowser(ValueError):
    """The model's architecture has parts the exported ONNX graph cannot express."""


@dataclass
class BrowserSpan:
    """Blocks ``[start, end)`` of a model, loaded and checked for export (:func:`load_browser_span`).

    Attributes:
        weights_digest: content hash of the span's weights, config and exporter versions.
        num_kv_heads: key/value heads per block (the browser sizes its cache with them).
        head_dim: size of one attention head.
        opset: the ONNX opset of the exported file.
    """

    weights_digest: str
    num_kv_heads: int
    head_dim: int
    opset: int
    _span: object

    def export(self) -> Path:
        """Export the span to ONNX once (cached); return the file's path."""
        from swarmnode.runtime.onnx_backend import exported_span

        return exported_span(self._span)


def load_browser_span(model: str, start: int, end: int) -> BrowserSpan:
    """Load blocks ``[start, end)`` of ``model`` (a registry name or checkpoint directory) for a browser node.

    Raises:
        UnsupportedInBrowser: the architecture cannot run as the exported graph.
    """
    # torch and the runtime load only when a span is exported, not when the portal imports this module.
    import torch

    from swarmnode.models import Checkpoint, load_span, resolve_model
    from swarmnode.runtime.graph import SpanGraph, UnsupportedForGraph
    from swarmnode.runtime.onnx_backend import OPSET, OnnxBackend, span_digest

    span = load_span(Checkpoint(resolve_model(model)), start, end, torch.float32, "cpu")
    try:
        graph = SpanGraph(span)
        OnnxBackend(span, fused=False)  # the portable export, checked against PyTorch on a probe
    except UnsupportedForGraph as exc:
        raise UnsupportedInBrowser(str(exc)) from None
    return BrowserSpan(span_digest(span), span.config.num_key_value_heads, graph.head_dim, OPSET, span)
