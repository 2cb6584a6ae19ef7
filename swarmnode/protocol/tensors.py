"""Tensor encoding on the wire: raw little-endian bytes plus dtype and shape (spec §3).

Only numpy is needed here, so a validator can run without torch. bfloat16 has no numpy
dtype: it travels as 2-byte words and is checked bit-wise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swarmnode.protocol.errors import ProtocolError

#: Wire dtypes and their item sizes in bytes (spec §3.1).
DTYPE_SIZES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}

_NUMPY_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2")}


@dataclass(frozen=True)
class WireTensor:
    """A tensor as it travels: ``data`` holds ``prod(shape) * itemsize`` little-endian bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def to_wire(self) -> dict:
        """Return the msgpack-ready mapping of this tensor."""
        return {"dtype": self.dtype, "shape": list(self.shape), "data": self.data}

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_numpy(self) -> np.ndarray:
        """View the bytes as a numpy array (bfloat16 as uint16 words)."""
        return np.frombuffer(self.data, dtype=_NUMPY_DTYPES[self.dtype]).reshape(self.shape)


def tensor_from_wire(obj: object, *, max_dims: int = 4) -> WireTensor:
    """Parse and check a tensor mapping received from a peer.

    Raises:
        ProtocolError: unknown dtype, bad shape, or byte count not matching the shape.
    """
    if not isinstance(obj, dict):
        raise ProtocolError("bad_tensor", "tensor must be a map with dtype, shape and data")
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:  # a list or map is unhashable (found by fuzzing)
        raise ProtocolError("bad_dtype", f"dtype {str(dtype)[:64]!r} not allowed; use one of {sorted(DTYPE_SIZES)}")
    if (
        not isinstance(shape, list | tuple)
        or not 1 <= len(shape) <= max_dims
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError("bad_shape", f"shape must be 1..{max_dims} non-negative integers, got {str(shape)[:100]}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("bad_tensor", "tensor data must be raw bytes")
    tensor = WireTensor(dtype, tuple(shape), bytes(data))
    if tensor.numel * DTYPE_SIZES[dtype] != len(tensor.data):
        raise ProtocolError(
            "bad_tensor",
            f"{len(tensor.data)} data bytes do not match shape {list(shape)} of {dtype}",
        )
    return tensor


def all_finite(tensor: WireTensor) -> bool:
    """True when no element is NaN or infinite (spec §3.3)."""
    arr = tensor.to_numpy()
    if tensor.dtype == "bfloat16":
        # Exponent bits all ones means inf or NaN.
        return not bool(np.any((arr & 0x7F80) == 0x7F80))
    return bool(np.isfinite(arr).all())


def tensor_from_numpy(array: np.ndarray, dtype: str | None = None) -> WireTensor:
    """Encode a float32/float16 numpy array (or uint16 bfloat16 words with ``dtype='bfloat16'``)."""
    if dtype is None:
        dtype = {np.dtype("float32"): "float32", np.dtype("float16"): "float16"}[array.dtype]
    arr = np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[dtype])
    return WireTensor(dtype, tuple(int(d) for d in arr.shape), arr.tobytes())
