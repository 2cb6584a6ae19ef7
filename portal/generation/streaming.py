"""One request served start to end in a gateway worker thread: route, prompt, decode, reply.

The replies go through ``emit(kind, **fields)``, which the gateway provides (it hands them to its
event loop); their order is the protocol's (:mod:`portal.generation.protocol`): ``gateway.started``,
``gateway.token`` for each new piece of text (with its tokens' ``logprobs`` when asked for); the gateway
itself settles the usage and sends ``gateway.done``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from portal.generation.decoding import Outcome, Usage, run_generation
from portal.generation.pool import ModelPool
from portal.generation.prompts import fit_prompt
from portal.generation.protocol import GenerationRequest

Emit = Callable[..., None]  # emit(kind, **fields): one reply; raises Cancelled when nobody listens any more


class Cancelled(Exception):
    """The requester stopped the generation or went away."""


def serve_request(
    pool: ModelPool, request: GenerationRequest, emit: Emit, cancelled: threading.Event, usage: Usage
) -> Outcome:
    """Answer ``request`` with the swarm, replying through ``emit``; stop early once ``cancelled`` is set.

    ``usage`` counts the tokens as they are used (also when this raises): what the gateway charges.

    Raises:
        BadRequest: unknown model, context too long, prompt over the token budget.
        SwarmUnavailable: the nodes do not cover the model.
        Cancelled: ``emit`` found the requester gone.
        RemoteError (from the swarm client): the swarm failed and failover gave up.
    """
    model = pool.get(request.model)
    prompt = fit_prompt(model.tokenizer, request, pool.context_limit(model))
    usage.prompt_tokens = len(prompt.ids)  # the nodes compute the prompt from here on
    emit("gateway.started", prompt_tokens=len(prompt.ids), dropped_messages=prompt.dropped_messages)

    def token(text: str, completion_tokens: int, logprobs: list[dict] | None = None) -> None:
        if logprobs is None:
            emit("gateway.token", text=text, completion_tokens=completion_tokens)
        else:
            emit("gateway.token", text=text, completion_tokens=completion_tokens, logprobs=logprobs)

    return run_generation(model, request, prompt, token, cancelled, usage)


def done_reply(outcome: Outcome) -> dict:
    """The fields of ``gateway.done`` for a generation that ran."""
    return {
        "text": outcome.text,
        "finish_reason": outcome.finish_reason,
        "usage": {
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        },
        "dropped_messages": outcome.dropped_messages,
        "ttft_s": round(outcome.ttft_s, 4),
        "tokens_per_s": round(outcome.tokens_per_s, 2),
    }


def cancelled_before_start() -> dict:
    """The fields of ``gateway.done`` for a request cancelled before a gateway took it (nothing to charge)."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {"text": "", "finish_reason": "cancelled", "usage": usage, "dropped_messages": 0, "tokens_per_s": 0}


def error_reply(code: str, message: str, status: int, param: str | None = None) -> dict:
    """The fields of ``gateway.error`` (``status``: what the OpenAI API answers with)."""
    return {"code": code, "message": message, "status": status, "param": param}
