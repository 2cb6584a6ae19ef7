"""Torch tensors on and off the wire: the one place that knows both torch and the wire dtypes.

Below both the client and the runtime (``protocol`` stays torch-free). Peer bytes are only
reinterpreted (``torch.frombuffer`` / ``numpy.frombuffer``), never unpickled or ``torch.load``-ed.
"""

from __future__ import annotations

import numpy as np
import torch

from swarmnode.protocol import WireTensor, tensor_from_numpy

#: Wire dtype names and their torch dtypes (spec §3.1).
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: The reverse map: torch dtype -> wire dtype name.
WIRE_DTYPES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}


def wire_to_tensor(tensor: WireTensor, dtype: torch.dtype | None = None, device: str = "cpu") -> torch.Tensor:
    """Copy wire bytes into a torch tensor (never ``torch.load``: bytes are only reinterpreted)."""
    out = torch.frombuffer(bytearray(tensor.data), dtype=TORCH_DTYPES[tensor.dtype]).reshape(tensor.shape)
    return out.to(device=device, dtype=dtype or out.dtype)


def tensor_to_wire(tensor: torch.Tensor, dtype: str | None = None) -> WireTensor:
    """Encode a tensor as little-endian bytes in ``dtype`` (default: its own dtype)."""
    dtype = dtype or WIRE_DTYPES[tensor.dtype]
    t = tensor.detach().to(device="cpu", dtype=TORCH_DTYPES[dtype]).contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    return WireTensor(dtype, tuple(t.shape), raw.numpy().tobytes())


def array_to_wire(array: np.ndarray, dtype: str) -> WireTensor:
    """Encode a float32 NumPy array in the wire ``dtype``.

    Through NumPy (a torch round trip costs ~0.1 ms a step cold, at every hop); bfloat16 is rounded
    by torch, as :func:`tensor_to_wire` rounds it, so every backend sends the same bytes.
    """
    if dtype == "bfloat16":
        return tensor_to_wire(torch.from_numpy(np.ascontiguousarray(array)), dtype)
    return tensor_from_numpy(array, dtype)
