"""Generation helpers: token selection with ``transformers``' semantics, settings, statistics, text.

The logits processors are ``transformers``' own classes, applied in the order ``generate``
applies them, so sampling settings mean exactly what they mean there. :func:`complete` turns a
model's token stream into text (what ``swarmnode generate`` prints).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from swarmnode.client.auditing import AuditStats
from swarmnode.client.recovery import FailoverEvent

if TYPE_CHECKING:
    from swarmnode.client.model import DistributedModelForCausalLM


@dataclass
class GenerationStats:
    """Timings of the last generation."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0  # prompt sent -> first new token chosen
    total_s: float = 0.0
    failovers: list[FailoverEvent] = field(default_factory=list)  # nodes replaced mid-generation
    audits: AuditStats = field(default_factory=AuditStats)  # what auditing did (when enabled)
    cached_prompt_tokens: int = 0  # prompt positions every node took from an earlier prompt (spec §4.9)

    @property
    def tokens_per_s(self) -> float:
        """Decoding speed after the first token."""
        decode_s = self.total_s - self.ttft_s
        return (self.new_tokens - 1) / decode_s if self.new_tokens > 1 and decode_s > 0 else 0.0

    def released(self, k: int, started: float) -> None:
        """Note that new token ``k`` (0-based) was handed out, for a generation that began at ``started``."""
        now = time.perf_counter()
        if k == 0:
            self.ttft_s = now - started
        self.new_tokens = k + 1
        self.total_s = now - started


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


def generation_config_of(checkpoint) -> GenerationConfig:
    """The checkpoint's ``generation_config.json``, or defaults from its model config."""
    try:
        return GenerationConfig.from_pretrained(checkpoint.path, local_files_only=True)
    except OSError:
        return GenerationConfig.from_model_config(checkpoint.config)


def sampling_params(generation_config, kwargs: dict) -> SamplingParams:
    """The model's ``GenerationConfig`` defaults, overridden by ``generate``-style keyword arguments.

    Raises:
        TypeError: an argument ``generate`` does not know.
        ValueError: settings ``generate`` would refuse.
    """
    gc = generation_config
    params = SamplingParams(
        max_new_tokens=gc.max_new_tokens or 20,
        do_sample=bool(gc.do_sample),
        temperature=gc.temperature if gc.temperature is not None else 1.0,
        top_k=gc.top_k if gc.top_k is not None else 50,
        top_p=gc.top_p if gc.top_p is not None else 1.0,
        min_p=gc.min_p,
        repetition_penalty=gc.repetition_penalty if gc.repetition_penalty is not None else 1.0,
        eos_token_id=gc.eos_token_id,
        pad_token_id=gc.pad_token_id,
    )
    names = {f.name for f in fields(SamplingParams)}
    for key, value in kwargs.items():
        if key not in names:
            raise TypeError(f"generate() got an unexpected keyword argument {key!r}")
        if value is not None or key in ("eos_token_id", "stop_strings", "top_k"):
            setattr(params, key, value)
    if isinstance(params.eos_token_id, int):
        params.eos_token_id = [params.eos_token_id]
    if isinstance(params.stop_strings, str):
        params.stop_strings = [params.stop_strings]
    params.validate()
    return params


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


def rolled_back(ids: torch.Tensor, prompt_len: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens kept after a rollback to cache ``position``, and the input to feed from there."""
    keep = max(prompt_len, position + 1)
    ids = ids[:, :keep]
    return ids, ids[:, position:]


def finished_rows(generated: torch.Tensor, eos: torch.Tensor, batch: int) -> torch.Tensor:  # (B, N) -> (B,)
    """Which sequences already produced an EOS token."""
    if not eos.numel() or generated.shape[1] == 0:
        return torch.zeros(batch, dtype=torch.bool)
    return torch.isin(generated, eos).any(dim=1)


def hit_stop(tokenizer, ids: torch.Tensor, prompt_text: list[str], stops: list[str]) -> bool:
    """Whether every sequence's generated text (after its prompt text) contains one of ``stops``."""
    texts = tokenizer.batch_decode(ids)
    return all(any(s in t[len(p) :] for s in stops) for t, p in zip(texts, prompt_text, strict=True))


# -- text --------------------------------------------------------------------------------------


def prompt_ids(tokenizer, prompt: str, chat: bool = False, system: str | None = None) -> torch.Tensor:  # (1, T)
    """``prompt`` as token ids; with ``chat``, wrapped in the model's chat template (after ``system``)."""
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


@dataclass
class Completion:
    """The text a generation produced."""

    text: str  # the new text, cut before the first stop string
    token_ids: list[int]  # every new token, the stop string's included


def complete(
    model: DistributedModelForCausalLM,
    input_ids: torch.Tensor,
    on_text: Callable[[str], None] | None = None,
    generator: torch.Generator | None = None,
    **kwargs,
) -> Completion:
    """Generate for one sequence, decoding the new tokens as they come.

    Args:
        model: the client.
        input_ids: ``(1, T)`` prompt token ids.
        on_text: called with each new piece of decoded text (special tokens skipped), as it arrives.
        generator: torch RNG for sampling.
        **kwargs: as for ``model.stream`` (``max_new_tokens``, ``stop_strings``, ...).

    Raises:
        as ``model.stream``.
    """
    stops = kwargs.get("stop_strings") or []
    stops = [stops] if isinstance(stops, str) else stops
    new_ids: list[int] = []
    printed = ""
    for token in model.stream(input_ids, generator=generator, **kwargs):
        new_ids.append(int(token[0]))
        text = model.tokenizer.decode(new_ids, skip_special_tokens=True)
        if on_text is not None:
            on_text(text[len(printed) :])
        printed = text
    return Completion(cut_at_stop(printed, stops), new_ids)


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to the first of ``stops`` it contains (all of it if none)."""
    cuts = [text.index(s) for s in stops if s in text]
    return text[: min(cuts)] if cuts else text
