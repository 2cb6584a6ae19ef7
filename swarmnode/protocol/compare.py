"""Comparing two nodes' results for the same computation, within a precision-aware tolerance (spec §11.3).

numpy only, so that the portal can check evidence without torch.
"""

from __future__ import annotations

import numpy as np

from swarmnode.protocol.tensors import WireTensor

#: Relative error (per position: ``||x - ref|| / ||ref||`` over the hidden dimension) tolerated per
#: precision, about twice the worst seen against fp32 torch on SmolLM2 spans of 3 and 10 blocks (real
#: text embeddings): ONNX Runtime fp32 5e-6, bfloat16 0.037 (3 blocks) / 0.016 (10), int8 weights 0.149 /
#: 0.065. A comparison uses the loosest precision involved (either node's compute dtype, the wire dtype).
TOLERANCE = {"float32": 2e-3, "float16": 3e-2, "bfloat16": 1e-1, "int8": 3e-1}


def tolerance_for(*dtypes: str) -> float:
    """The tolerance of a comparison between results of these precisions (the loosest; unknown: int8's)."""
    known = [d for d in dtypes if d]
    return max(TOLERANCE.get(d, TOLERANCE["int8"]) for d in known) if known else TOLERANCE["float32"]


def to_float32(tensor: WireTensor) -> np.ndarray:
    """The tensor's values as float32 (bfloat16 words widened)."""
    arr = tensor.to_numpy()
    if tensor.dtype == "bfloat16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def relative_errors(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per position ``(T,)``: the largest over the batch of ``||out - ref|| / ||ref||`` over the hidden size.

    Args:
        out, ref: ``(B, T, H)`` arrays of the same shape.
    """
    num = np.linalg.norm(out - ref, axis=-1)  # (B, T)
    den = np.maximum(np.linalg.norm(ref, axis=-1), 1e-6)
    return (num / den).max(axis=0)
