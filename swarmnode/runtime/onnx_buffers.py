"""Keys and values for the ONNX Runtime backend: each session's cache, and the buffers batched passes share.

The fused graph reads and writes keys and values in place, so buffers are allocated with room
to grow (doubling) and reused: a batched pass keeps one set of buffers from pass to pass and
remembers which session's past each row holds, so a session batched in the same row again
needs no copy of its past.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

import numpy as np


def capacity_for(needed: int, current: int = 0) -> int:
    """Positions to allocate for ``needed``: at least 64 (or ``current``), doubled until it fits."""
    cap = max(64, current)
    while cap < needed:
        cap *= 2
    return cap


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

    def reserve(self, needed: int, max_positions: int) -> None:
        """Grow the buffers to hold ``needed`` positions (never past ``max_positions`` when avoidable).

        Raises:
            ValueError: ``needed`` is past the model's ``max_positions``.
        """
        if needed <= self.capacity:
            return
        if needed > max_positions:
            raise ValueError(f"position {needed} is past the model's {max_positions}")
        cap = min(capacity_for(needed, self.capacity), max(needed, max_positions))
        shape = (*self.k.shape[:3], cap, self.k.shape[4])
        k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        k[:, :, :, : self.length] = self.k[:, :, :, : self.length]
        v[:, :, :, : self.length] = self.v[:, :, :, : self.length]
        self.k, self.v = k, v


class BatchBuffers:
    """Keys and values ``(L, rows, KV, S, D)`` shared by the fused graph's batched passes.

    Args:
        num_layers: ``L``.
        num_kv: key/value heads, ``KV``.
        head_dim: ``D``.
    """

    def __init__(self, num_layers: int, num_kv: int, head_dim: int) -> None:
        self.num_layers, self.num_kv, self.head_dim = num_layers, num_kv, head_dim
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None
        # Per row of the batch buffers: which cache it holds a copy of, as (weak reference, version),
        # so a session batched in the same row again needs no copy of its past.
        self._rows: list[tuple[weakref.ref, int] | None] = []
        self.binding: dict = {}  # the buffers' IO binding (see SpanRunner.kv_binding)
        self.rows_copied = 0  # sessions whose past was copied into the buffers (the rest were there)

    def load(self, caches: list[OnnxCache], positions: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The buffers, sized for ``len(caches)`` rows of ``positions``, with every cache's past in its row.

        Returns:
            ``(k, v, rows)``: the buffers and each cache's row (see :meth:`place`).
        """
        past_k, past_v = self.buffers(len(caches), positions)
        rows = self.place(caches)
        for row, c in zip(rows, caches, strict=True):
            if not self.holds(row, c):  # not there yet: copy its past in
                self.rows_copied += 1
                past_k[:, row, :, : c.length] = c.k[:, 0, :, : c.length]
                past_v[:, row, :, : c.length] = c.v[:, 0, :, : c.length]
        return past_k, past_v, rows

    def buffers(self, rows: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values ``(L, rows, KV, S >= positions, D)`` for a batched pass, reused from pass to pass.

        Fresh buffers of this size cost more in page faults than the pass's copies; stale
        positions past a row's length are never attended to (each row has its own length).
        """
        have = self._scratch
        if have is None or have[0].shape[1] < rows or have[0].shape[3] < positions:
            most = max(rows, have[0].shape[1] if have is not None else 0)
            cap = capacity_for(positions, have[0].shape[3] if have is not None else 0)
            shape = (self.num_layers, most, self.num_kv, cap, self.head_dim)
            have = self._scratch = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
            self._rows = [None] * most
        return have[0][:, :rows], have[1][:, :rows]

    def holds(self, row: int, cache: OnnxCache) -> bool:
        """Whether batch row ``row`` holds ``cache``'s current keys and values."""
        held = self._rows[row]
        return held is not None and held[0]() is cache and held[1] == cache.version

    def kept(self, row: int, cache: OnnxCache) -> None:
        """Note that row ``row`` now holds ``cache``'s current keys and values."""
        self._rows[row] = (weakref.ref(cache), cache.version)

    def place(self, caches: list[OnnxCache]) -> list[int]:
        """Rows ``0..n-1`` of the batch buffers for ``caches``: a cache keeps the row that still holds
        its current keys and values; the rest take the free rows. Returns each cache's row."""
        n = len(caches)
        rows: list[int | None] = [None] * n
        taken: set[int] = set()
        for i, c in enumerate(caches):
            for r in range(n):
                if r not in taken and self.holds(r, c):
                    rows[i] = r
                    taken.add(r)
                    break
        free = iter(r for r in range(n) if r not in taken)
        return [r if r is not None else next(free) for r in rows]
