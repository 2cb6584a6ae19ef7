"""A deliberately dishonest node, for tests and demos of auditing (``serve --corrupt-fraction F``).

The flag is hidden from ``--help`` and announced nowhere: to clients and the tracker such a node
looks like any other. On a fraction ``F`` of its steps it adds Gaussian noise of ``scale`` times the
output's RMS to its output, then signs the perturbed output as usual (spec §11), which is exactly
what a lying node would do, and what makes it attributable once an audit catches it.
"""

from __future__ import annotations

import random

import numpy as np

from swarmnode.protocol import WireTensor, tensor_from_numpy


class Corruptor:
    """Perturbs step outputs with probability ``fraction``.

    Args:
        fraction: share of steps to perturb, in [0, 1].
        scale: noise standard deviation relative to the output's RMS.
        seed: RNG seed (None: random).
    """

    def __init__(self, fraction: float, scale: float = 0.5, seed: int | None = None) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("--corrupt-fraction must lie in [0, 1]")
        self.fraction = fraction
        self.scale = scale
        self._rng = random.Random(seed)
        self._noise = np.random.default_rng(seed)
        self.perturbed = 0

    def maybe_perturb(self, out: WireTensor) -> WireTensor:
        """``out`` itself, or a perturbed copy on a fraction of calls."""
        if self.fraction <= 0.0 or self._rng.random() >= self.fraction:
            return out
        self.perturbed += 1
        arr = out.to_numpy()
        if out.dtype == "bfloat16":
            values = (arr.astype(np.uint32) << 16).view(np.float32)
        else:
            values = arr.astype(np.float32)
        rms = float(np.sqrt(np.mean(np.square(values)))) or 1.0
        noisy = values + self._noise.normal(0.0, self.scale * rms, values.shape).astype(np.float32)
        if out.dtype == "bfloat16":
            return tensor_from_numpy((noisy.view(np.uint32) >> 16).astype(np.uint16), "bfloat16")
        return tensor_from_numpy(noisy.astype(out.dtype), out.dtype)
