"""The generation loop on the gateway: tokens from the swarm, decoded into text pieces as they come.

Stop strings are held back until they can no longer start one (they are never part of the answer);
a set ``cancelled`` event ends the loop at the next token, and the swarm sessions always close.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from portal.generation.logprobs import LogprobRecorder, tokens_within
from portal.generation.prompts import Prompt
from portal.generation.protocol import GenerationRequest


@dataclass
class Usage:
    """Tokens a generation has used so far: kept up to date token by token, so that whatever ends the
    generation (Stop, a requester gone, a swarm error) the gateway charges every token generated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        """Prompt and answer tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Outcome:
    """How a generation ended."""

    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    dropped_messages: int
    ttft_s: float
    tokens_per_s: float


def run_generation(
    model,
    request: GenerationRequest,
    prompt: Prompt,
    emit: Callable[..., None],
    cancelled: threading.Event,
    usage: Usage | None = None,
) -> Outcome:
    """Generate the answer, calling ``emit(text, completion_tokens)`` with each new piece of text as it is
    decoded (and the tokens generated so far); ``usage.completion_tokens`` counts every token as it comes.
    With ``request.logprobs``, ``emit(text, completion_tokens, logprobs)`` also gets the entries of the tokens
    whose text is out by then (:mod:`portal.generation.logprobs`; an EOS token or a stop string's has none).

    Stops at EOS, a stop string (which is not part of the answer), ``max_new_tokens`` or as soon as
    ``cancelled`` is set; in every case the swarm sessions are closed before returning.

    Raises:
        RemoteError (from the swarm client): the swarm failed and failover gave up.
    """
    tokenizer = model.tokenizer
    generator = torch.Generator().manual_seed(request.seed) if request.seed is not None else None
    greedy = request.temperature == 0
    recorder = LogprobRecorder(tokenizer, request.top_logprobs) if request.logprobs else None
    stream = model.stream(
        torch.tensor([prompt.ids]),
        generator=generator,
        max_new_tokens=request.max_new_tokens,
        do_sample=not greedy,
        temperature=request.temperature if not greedy else 1.0,
        top_p=request.top_p,
        top_k=None,  # OpenAI semantics: only temperature and top_p
        stop_strings=request.stop or None,
        prefix_salt=request.prefix_salt,  # "" (no owner known): no reuse across requests
        on_logits=recorder,
    )
    hold = max((len(s) for s in request.stop), default=1) - 1  # text that may be the start of a stop string
    new_ids: list[int] = []
    sent = 0
    logged = 0  # tokens whose logprobs went out with a piece of text
    started = time.perf_counter()
    ttft = 0.0
    finish = "length"
    eos_ids = model.generation_config.eos_token_id
    eos = set(eos_ids) if isinstance(eos_ids, list) else {eos_ids}
    usage = usage if usage is not None else Usage(len(prompt.ids))
    try:
        for token in stream:
            if cancelled.is_set():
                finish = "cancelled"
                break
            tid = int(token[0])
            new_ids.append(tid)
            usage.completion_tokens = len(new_ids)
            if not ttft:
                ttft = time.perf_counter() - started
            if tid in eos:
                finish = "stop"
                break
            text = tokenizer.decode(new_ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # half of a multi-byte character: wait for the rest
            if _stop_at(text, request.stop) is not None:
                finish = "stop"
                break
            ready = len(text) - hold
            if ready > sent:
                if recorder is None:
                    emit(text[sent:ready], len(new_ids))
                else:
                    out = tokens_within(tokenizer, new_ids, ready, logged)
                    emit(text[sent:ready], len(new_ids), recorder.entries(logged, out))
                    logged = out
                sent = ready
        else:
            if cancelled.is_set():
                finish = "cancelled"
    finally:
        stream.close()  # closes every node session at once
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    if (cut := _stop_at(text, request.stop)) is not None:
        text = text[:cut]
        finish = "cancelled" if finish == "cancelled" else "stop"
    if recorder is not None:  # the tokens that made the answer (up to the stop string, without EOS)
        out = tokens_within(tokenizer, new_ids, len(text), logged)
        if out < len(new_ids) and len(tokenizer.decode(new_ids[:out], skip_special_tokens=True)) < len(text):
            out += 1  # a token that straddles a stop string: part of it is in the answer
        out = min(out, len(new_ids) - (1 if new_ids and new_ids[-1] in eos else 0))
        if len(text) > sent or out > logged:
            emit(text[sent:], len(new_ids), recorder.entries(logged, out))
    elif len(text) > sent:
        emit(text[sent:], len(new_ids))
    total = time.perf_counter() - started
    decode_s = total - ttft
    return Outcome(
        text=text,
        finish_reason=finish,
        prompt_tokens=len(prompt.ids),
        completion_tokens=len(new_ids),
        dropped_messages=prompt.dropped_messages,
        ttft_s=ttft,
        tokens_per_s=(len(new_ids) - 1) / decode_s if len(new_ids) > 1 and decode_s > 0 else 0.0,
    )


def _stop_at(text: str, stops: list[str]) -> int | None:
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else None
