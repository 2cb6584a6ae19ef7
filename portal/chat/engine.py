"""The gateway's synchronous half: each model's client parts loaded once, generations run in threads.

The swarm client (:mod:`swarmnode.client`) is synchronous; one :class:`ModelPool` per gateway
process holds one ``DistributedModelForCausalLM`` per model (tokenizer, embeddings, LM head) that
every generation thread shares. Each generation opens its own swarm sessions; the client batches
concurrent sessions' LM-head rows itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from portal.chat.prompts import ContextTooLong, Prompt, chat_prompt, text_prompt
from portal.chat.protocol import BadRequest, GenerationRequest
from swarmnode.client.failover import FailoverPolicy

log = logging.getLogger("portal.chat.gateway")

# A gateway runs many sessions at once, so a node's queue (and its step times) grows with the gateway's
# own load: the client's default adaptive step timeout (8x the smoothed step time, at least 2 s) would
# read a busy node as a dead one and ban it for every session. Wait longer before failing over.
GATEWAY_FAILOVER = FailoverPolicy(min_step_timeout_s=20.0, step_timeout_factor=50.0)

REFRESH_EVERY_S = 15.0  # ask the tracker again for nodes at most this often (and whenever routing fails)


class Cancelled(Exception):
    """The requester stopped the generation or went away."""


class SwarmUnavailable(Exception):
    """No chain of reachable nodes covers the model (the OpenAI API answers 503)."""


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


class ModelPool:
    """Client parts of each model, loaded on first use and kept.

    Args:
        peers_for: model name -> node URLs the tracker knows (online nodes).
        context_cap: if positive, a context smaller than the model's; None: ``settings.CHAT_CONTEXT_TOKENS``.
        timeout: seconds to wait for any node reply.
    """

    def __init__(
        self, peers_for: Callable[[str], list[str]], context_cap: int | None = None, timeout: float = 30.0
    ) -> None:
        self.peers_for = peers_for
        self.context_cap = context_cap
        self.timeout = timeout
        self._models: dict = {}
        self._refreshed: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, name: str):
        """The loaded client of ``name`` with a fresh enough view of the swarm.

        Raises:
            BadRequest: the gateway has no checkpoint of that model (404).
            SwarmUnavailable: the nodes do not cover it.
        """
        from portal.ledger.receipts import gateway_identity
        from swarmnode.client.model import DistributedModelForCausalLM
        from swarmnode.client.routing import SwarmNotCovering
        from swarmnode.models import Checkpoint, resolve_model

        urls = self.peers_for(name)
        if not urls:
            raise SwarmUnavailable(f"no node serves {name} right now")
        with self._lock:
            model = self._models.get(name)
            if model is None:
                try:
                    checkpoint = Checkpoint(resolve_model(name))
                except Exception as exc:
                    raise BadRequest(
                        f"the gateway cannot load model {name!r}: {exc}", "model", "model_not_found", 404
                    ) from None
                # Sessions close with usage receipts signed by the gateway's system key (spec §8): the
                # nodes get paid from system:rewards, the chat/API users were charged by charge_usage.
                identity = gateway_identity()
                model = DistributedModelForCausalLM(
                    name, checkpoint, [], torch.float32, self.timeout, identity=identity, failover=GATEWAY_FAILOVER
                )
                self._models[name] = model
            stale = time.monotonic() - self._refreshed.get(name, 0.0) > REFRESH_EVERY_S
            stale = stale or set(urls) != set(model.urls)  # the tracker saw nodes join or leave
        try:
            if stale:
                self._refresh(model, urls)
            try:
                model.chain()
            except SwarmNotCovering:
                self._refresh(model, self.peers_for(name))
                model.chain()
        except SwarmNotCovering as exc:
            raise SwarmUnavailable(f"the swarm does not cover {name} right now: {exc}") from None
        return model

    def _refresh(self, model, urls: list[str]) -> None:
        model.urls = urls
        model.discover()
        model.peers = [p for p in model.peers if p.url in urls]  # nodes that left are not used any more
        self._refreshed[model.name] = time.monotonic()

    def context_limit(self, model) -> int:
        """Tokens a session may hold: the model's positions, the nodes' session limit, the cap."""
        limits = [getattr(model.config, "max_position_embeddings", 0) or 0]
        limits += [p.max_session_length for p in model.chain()]
        from django.conf import settings

        cap = settings.CHAT_CONTEXT_TOKENS if self.context_cap is None else self.context_cap
        if cap > 0:
            limits.append(cap)
        return min(x for x in limits if x > 0)


def build_prompt(pool: ModelPool, model, request: GenerationRequest) -> Prompt:
    """The request's prompt as token ids, fitted to the context; caps ``max_new_tokens`` to the token budget.

    Raises:
        BadRequest: ``context_length_exceeded``, or ``insufficient_credits`` (the prompt exceeds the budget).
    """
    limit = pool.context_limit(model)
    try:
        if request.messages is not None:
            prompt = chat_prompt(model.tokenizer, request.messages, request.max_new_tokens, limit, request.truncate)
        else:
            prompt = text_prompt(model.tokenizer, request.prompt or "", request.max_new_tokens, limit)
    except ContextTooLong as exc:
        raise BadRequest(str(exc), "messages", "context_length_exceeded") from None
    if request.token_budget:
        room = request.token_budget - len(prompt.ids)
        if room < 1:
            raise BadRequest(
                f"your credits pay for {request.token_budget} tokens, and the prompt alone has {len(prompt.ids)}",
                None,
                "insufficient_credits",
                402,
            )
        request.max_new_tokens = min(request.max_new_tokens, room)
    return prompt


def run_generation(
    model,
    request: GenerationRequest,
    prompt: Prompt,
    emit: Callable[[str], None],
    cancelled: threading.Event,
) -> Outcome:
    """Generate the answer, calling ``emit(text)`` with each new piece of text as it is decoded.

    Stops at EOS, a stop string (which is not part of the answer), ``max_new_tokens`` or as soon as
    ``cancelled`` is set; in every case the swarm sessions are closed before returning.

    Raises:
        RemoteError (from the swarm client): the swarm failed and failover gave up.
    """
    tokenizer = model.tokenizer
    generator = torch.Generator().manual_seed(request.seed) if request.seed is not None else None
    greedy = request.temperature == 0
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
    )
    hold = max((len(s) for s in request.stop), default=1) - 1  # text that may be the start of a stop string
    new_ids: list[int] = []
    sent = 0
    started = time.perf_counter()
    ttft = 0.0
    finish = "length"
    eos_ids = model.generation_config.eos_token_id
    eos = set(eos_ids) if isinstance(eos_ids, list) else {eos_ids}
    try:
        for token in stream:
            if cancelled.is_set():
                finish = "cancelled"
                break
            tid = int(token[0])
            new_ids.append(tid)
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
                emit(text[sent:ready])
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
    if len(text) > sent:
        emit(text[sent:])
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
