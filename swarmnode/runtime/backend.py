"""The PyTorch backend: runs a :class:`SpanModel` on CPU or CUDA, converting wire tensors."""

from __future__ import annotations

import torch

from swarmnode.models.span import SpanModel
from swarmnode.models.wire import WIRE_DTYPES, tensor_to_wire, wire_to_tensor
from swarmnode.protocol import WireTensor


class TorchBackend:
    """Run a span with PyTorch.

    Args:
        span: the loaded blocks.
        device: ``cpu`` or ``cuda[:N]``.
        dtype: compute dtype of the span.
    """

    name = "torch"

    def __init__(
        self,
        span: SpanModel,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        threads: int | None = None,
        small_step_threads: int | None = None,
        small_step_tokens: int = 4,
    ) -> None:
        self.span = span
        self.device = device
        self.dtype = dtype
        self.threads = threads or torch.get_num_threads()
        self.precision = WIRE_DTYPES[dtype]
        # On CPU a one-token step is bound by memory and per-op overhead, not arithmetic: extra
        # threads add little and their barriers stall whenever another process holds a core.
        self.small_step_threads = small_step_threads or self.threads
        self.small_step_tokens = small_step_tokens

    def new_cache(self):
        """An empty per-session KV cache."""
        return self.span.new_cache()

    def _run(self, hidden: WireTensor, cache, lengths: tuple[int, ...] = ()) -> WireTensor:
        x = wire_to_tensor(hidden, self.dtype, self.device)  # (B, T, H)
        if self.device == "cpu":
            small = x.shape[0] * x.shape[1] <= self.small_step_tokens
            torch.set_num_threads(self.small_step_threads if small else self.threads)
        if lengths:  # an encoder's padded rows: positions past each row's length are masked out (spec §4.4)
            rows = torch.tensor(lengths, device=x.device)[:, None]  # (B, 1)
            mask = (torch.arange(x.shape[1], device=x.device)[None, :] < rows).long()  # (B, T)
            return tensor_to_wire(self.span(x, attention_mask=mask), hidden.dtype)
        # Reply in the dtype the peer sent, whatever this node computes in.
        return tensor_to_wire(self.span(x, cache), hidden.dtype)

    def step(self, hidden: WireTensor, cache) -> WireTensor:
        """Run new positions through the span, appending their keys/values to ``cache``."""
        return self._run(hidden, cache)

    def forward(self, hidden: WireTensor, lengths: tuple[int, ...] = ()) -> WireTensor:
        """Run positions 0..T-1 through the span without a cache (``lengths``: rows' real positions, encoders)."""
        return self._run(hidden, None, lengths)

    def step_batch(self, items: list[tuple[WireTensor, object]]) -> list[WireTensor]:
        """Several sessions' steps, one after the other.

        The ``transformers`` cache cannot mix sessions at different positions in one pass, and
        running them separately keeps every session bit-identical to local ``transformers``.
        """
        return [self.step(hidden, cache) for hidden, cache in items]

    @property
    def weight_bytes(self) -> int:
        """Bytes of the span's parameters."""
        return sum(p.numel() * p.element_size() for p in self.span.parameters())
