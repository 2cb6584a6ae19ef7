"""Log-probabilities of the answer's tokens, from the LM head the gateway holds.

They are the model's own distribution: ``log_softmax`` of the raw logits of each step, **before**
temperature, top-p or any other sampling processor (as OpenAI reports them: changing the temperature
changes which tokens are picked, not the log-probabilities reported for them).

Entries have OpenAI's chat shape (``{"token", "logprob", "bytes", "top_logprobs": [...]}``); the
API turns them into the legacy ``/v1/completions`` shape itself.
"""

from __future__ import annotations

import math

import torch

FLOOR = -9999.0  # what OpenAI reports for a token the model gives no chance at all (JSON has no -inf)


class LogprobRecorder:
    """``model.stream(..., on_logits=recorder)``: keeps the chosen token's log-probability and the ``top``
    most likely tokens of every step (sequence 0 of the batch).

    Args:
        tokenizer: to spell tokens.
        top: alternatives to keep per position (0 to 20).
    """

    def __init__(self, tokenizer, top: int = 0) -> None:
        self.tokenizer = tokenizer
        self.top = top
        self.steps: dict[int, tuple[int, float, list[tuple[int, float]]]] = {}

    def __call__(self, k: int, logits: torch.Tensor, token: torch.Tensor) -> None:  # (B, V), (B,)
        """Record new token ``k`` (a second call for the same ``k``, after a rollback, replaces the first)."""
        row = torch.log_softmax(logits[0].float(), dim=-1)  # (V,)
        chosen = int(token[0])
        alternatives: list[tuple[int, float]] = []
        if self.top:
            values, indices = torch.topk(row, self.top)
            alternatives = [(int(i), float(v)) for i, v in zip(indices, values, strict=True)]
        self.steps[k] = (chosen, float(row[chosen]), alternatives)

    def entries(self, start: int, end: int) -> list[dict]:
        """OpenAI entries of new tokens ``start .. end-1`` (those not recorded are skipped)."""
        out = []
        for k in range(start, end):
            step = self.steps.get(k)
            if step is None:
                continue
            tid, logprob, alternatives = step
            out.append({**self._token(tid, logprob), "top_logprobs": [self._token(i, v) for i, v in alternatives]})
        return out

    def _token(self, tid: int, logprob: float) -> dict:
        text = self.tokenizer.decode([tid])
        value = logprob if math.isfinite(logprob) else FLOOR
        return {"token": text, "logprob": max(value, FLOOR), "bytes": list(text.encode("utf-8"))}


def tokens_within(tokenizer, ids: list[int], chars: int, at_least: int = 0) -> int:
    """How many of ``ids`` decode to text no longer than ``chars`` characters (the longest such prefix; not
    fewer than ``at_least``, a count known to fit)."""
    low, high = min(at_least, len(ids)), len(ids)
    while low < high:  # decoded length grows with the prefix: binary search
        mid = (low + high + 1) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) <= chars:
            low = mid
        else:
            high = mid - 1
    return low
