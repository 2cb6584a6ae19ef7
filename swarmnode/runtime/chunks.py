"""Cutting hidden states along the token axis: long prompts go through the scheduler in chunks."""

from __future__ import annotations

import numpy as np

from swarmnode.protocol import WireTensor


def concat_tokens(parts: list[WireTensor]) -> WireTensor:
    """Join step outputs along the token axis (chunks of one prompt)."""
    if len(parts) == 1:
        return parts[0]
    b, _, h = parts[0].shape
    arrays = [p.to_numpy().reshape(b, -1, h) for p in parts]
    joined = np.ascontiguousarray(np.concatenate(arrays, axis=1))
    return WireTensor(parts[0].dtype, tuple(joined.shape), joined.tobytes())


def slice_tokens(hidden: WireTensor, start: int, end: int) -> WireTensor:
    """Positions ``start..end-1`` of a ``(B, T, H)`` tensor."""
    b, t, h = hidden.shape
    part = hidden.to_numpy().reshape(b, t, h)[:, start:end]
    return WireTensor(hidden.dtype, tuple(part.shape), part.copy().tobytes())


def split_tokens(hidden: WireTensor, chunk: int) -> list[WireTensor]:
    """Cut a ``(B, T, H)`` tensor into ``(B, <=chunk, H)`` pieces along T."""
    b, t, h = hidden.shape
    if t <= chunk:
        return [hidden]
    arr = hidden.to_numpy().reshape(b, t, h)
    pieces = []
    for start in range(0, t, chunk):
        part = arr[:, start : start + chunk]
        data = part.copy().tobytes()
        pieces.append(WireTensor(hidden.dtype, tuple(part.shape), data))
    return pieces
