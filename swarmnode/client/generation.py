"""Token selection with the same semantics as ``transformers``' ``generate``.

The logits processors are ``transformers``' own classes, applied in the order ``generate``
applies them, so sampling settings mean exactly what they mean there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass
class SamplingParams:
    """Generation settings (names and defaults as in ``transformers.GenerationConfig``)."""

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    eos_token_id: list[int] | None = None
    pad_token_id: int | None = None
    stop_strings: list[str] | None = None

    def validate(self) -> None:
        """Raise ValueError for settings ``generate`` would also refuse."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be positive when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty}")


def build_processors(params: SamplingParams) -> LogitsProcessorList:
    """The processors ``generate`` would build for these settings, in its order."""
    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.do_sample:
        if params.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            procs.append(TopKLogitsWarper(top_k=params.top_k, min_tokens_to_keep=1))
        if params.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=params.top_p, min_tokens_to_keep=1))
        if params.min_p is not None:
            procs.append(MinPLogitsWarper(min_p=params.min_p, min_tokens_to_keep=1))
    return procs


def select_next(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    params: SamplingParams,
    procs: LogitsProcessorList,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # (B, V) -> (B,)
    """Pick the next token per sequence: argmax when greedy, a sample otherwise."""
    scores = procs(input_ids, logits.float())
    if params.do_sample:
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    return greedy_pick(scores)


def greedy_pick(scores: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,)
    """The index of each row's largest score (the first one on ties, NaN counting as largest, as
    ``torch.argmax``). On CPU through NumPy: ``torch.argmax`` takes ~140 us over a 49k vocabulary
    here, NumPy ~10 us, and a client runs one per token of every session."""
    if scores.device.type != "cpu" or scores.requires_grad:
        return torch.argmax(scores, dim=-1)
    return torch.from_numpy(np.argmax(scores.float().numpy(), axis=-1))
