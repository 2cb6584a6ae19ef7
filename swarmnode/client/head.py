"""What the client keeps of the model: token embeddings, the final norm and the LM head."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from swarmnode.client.batching import Participant, RowBatcher
from swarmnode.models.checkpoint import Checkpoint
from swarmnode.models.span import HeadModules, load_head_modules

log = logging.getLogger("swarmnode.client")


class ClientHead(nn.Module):
    """What the client keeps: token embeddings, the final norm and the LM head.

    Inputs and outputs live on the CPU (they go on or come off the wire); the parts themselves
    may sit on a GPU. One-row logits requests from concurrent sessions in one process (a
    gateway, a benchmark) share one pass over the LM head, which dominates the client's cost;
    a single session always runs alone, so its numbers are unchanged.
    """

    def __init__(self, lm: HeadModules) -> None:
        super().__init__()
        self.parts = lm
        self.embed = lm.get_input_embeddings()
        # Whether the input side is the embedding table alone (no positions, no scaling): then a token's
        # input is one table lookup instead of the stack's forward up to its first block (rotary tables,
        # masks: ~0.5-1 ms a step here, for every session). None: not probed yet.
        self._plain_embed: bool | None = None
        self.norm = lm.norm
        self.lm_head = lm.get_output_embeddings()
        self._rows = RowBatcher(self._logits)
        self.onnx = None  # OnnxHead, once enable_onnx() succeeded
        self._onnx_rows = RowBatcher(self._onnx_logits)

    @property
    def device(self) -> torch.device:
        """Where the parts live."""
        return self.embed.weight.device

    @torch.inference_mode()
    def embed_tokens(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:  # (B, T) -> (B, T, H)
        """What the first block receives for token ids at positions ``past_length...`` (the model's own input side)."""
        ids = input_ids.to(self.device)
        if self._plain_embed is None:
            self._plain_embed = self._input_side_is_lookup()
        if self._plain_embed:
            return self.embed(ids).cpu()
        return self.parts.embed(ids, past_length).cpu()

    def _input_side_is_lookup(self) -> bool:
        """Whether the stack's input side equals the bare embedding lookup, bit for bit, at two different
        positions (a model that adds position embeddings or scales its embeddings differs on the probe)."""
        vocab = int(self.embed.weight.shape[0])
        probe = torch.randint(0, vocab, (2, 3), generator=torch.Generator().manual_seed(0)).to(self.device)
        try:
            table = self.embed(probe)
            return all(torch.equal(self.parts.embed(probe, past), table) for past in (0, 5))
        except Exception:  # an input side the bare table cannot even be compared with: keep the stack's own
            return False

    @torch.inference_mode()
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.parts.logits(hidden.to(self.device, self.embed.weight.dtype)).cpu()

    @contextlib.contextmanager
    def participant(self):
        """Mark a generation running in this process: its one-row logits are batched with the others'.

        Yields the :class:`Participant` to pass to :meth:`logits`.
        """
        member = Participant()
        with self._rows.participant(member), self._onnx_rows.participant(member):
            yield member

    def enable_onnx(self) -> bool:
        """Make ``logits(..., fast=True)`` run on ONNX Runtime (CPU, fp32 only); whether it can."""
        if self.onnx is not None:
            return True
        if self.device.type != "cpu" or self.embed.weight.dtype != torch.float32:
            return False
        try:
            from swarmnode.client.onnx_head import OnnxHead

            onnx = OnnxHead(self.norm, self.lm_head)
            probe = torch.randn(1, 2, self.parts.hidden_size, generator=torch.Generator().manual_seed(0))
            ref = self._logits(probe)
            diff = float((onnx(probe) - ref).abs().max()) / max(float(ref.abs().max()), 1e-6)
            if diff > 1e-4:  # a norm or logit transform the ONNX head does not express
                raise ValueError(f"ONNX head differs from PyTorch by {diff:.2g} (relative)")
            self.onnx = onnx
        except Exception as exc:  # no onnxruntime, or a head the builder cannot express
            log.warning("ONNX Runtime head unavailable (%s); logits stay on PyTorch", exc)
            return False
        return True

    def _onnx_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.onnx(hidden)

    def logits(
        self, hidden: torch.Tensor, fast: bool = False, member: Participant | None = None
    ) -> torch.Tensor:  # (B, T, H) -> (B, T, V)
        """Final norm and LM head.

        ``fast``: on ONNX Runtime when :meth:`enable_onnx` succeeded (about 3x faster on CPU, not
        bit-identical to PyTorch); otherwise PyTorch, bit-identical to ``transformers``.
        ``member``: from :meth:`participant`, for a generation running beside others.
        """
        fast = fast and self.onnx is not None
        if hidden.shape[0] == 1 and hidden.shape[1] == 1:
            return (self._onnx_rows if fast else self._rows)(hidden, member)
        return self._onnx_logits(hidden) if fast else self._logits(hidden)


def load_client_head(checkpoint: Checkpoint, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ClientHead:
    """Load embeddings, final norm and LM head (tied to the embeddings when the config says so)."""
    return ClientHead(load_head_modules(checkpoint, dtype=dtype, device=device))
