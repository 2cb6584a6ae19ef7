"""Prompts as token ids: the model's own chat template (oldest turns dropped to fit the context) or raw text."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from portal.generation.protocol import BadRequest, GenerationRequest


class ContextTooLong(ValueError):
    """Even the newest turn alone (plus the answer's token budget) does not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, limit: int) -> None:
        super().__init__(
            f"this request needs {prompt_tokens} prompt tokens + {max_new_tokens} new tokens, "
            f"but the model's context is {limit} tokens: shorten the message or lower max_tokens"
        )
        self.prompt_tokens = prompt_tokens
        self.limit = limit


@dataclass
class Prompt:
    """Token ids to feed the model, and how many of the oldest messages were left out to fit."""

    ids: list[int]
    dropped_messages: int = 0


def chat_prompt(tokenizer, messages: list[dict], max_new_tokens: int, limit: int, truncate: bool = True) -> Prompt:
    """Token ids of ``messages`` rendered by the tokenizer's chat template, ending with the assistant's cue.

    Leading system messages are always kept. When ``prompt + max_new_tokens`` exceeds ``limit`` and
    ``truncate`` is true, the oldest other turns are dropped (a user turn with the answer that followed
    it) until it fits; the newest message is never dropped.

    Raises:
        ContextTooLong: it does not fit (``truncate`` false, or the newest message alone is too long).
    """
    system = [m for m in messages[: _leading_system(messages)]]
    turns = messages[len(system) :]
    dropped = 0
    while True:
        ids = _render(tokenizer, system + turns)
        if len(ids) + max_new_tokens <= limit:
            return Prompt(ids, dropped)
        if not truncate or len(turns) <= 1:
            raise ContextTooLong(len(ids), max_new_tokens, limit)
        cut = 1
        while cut < len(turns) - 1 and turns[cut]["role"] != "user":  # start again at a question
            cut += 1
        turns = turns[cut:]
        dropped += cut


def text_prompt(tokenizer, text: str, max_new_tokens: int, limit: int) -> Prompt:
    """Token ids of a raw completion prompt (no template), with the special tokens the model's tokenizer adds to
    any text (Gemma's ``<bos>``, without which the base model rambles; SmolLM2's adds none).

    Raises:
        ContextTooLong: prompt plus ``max_new_tokens`` exceeds ``limit``.
    """
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if not ids:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [bos]  # the model needs at least one token to continue from
    if len(ids) + max_new_tokens > limit:
        raise ContextTooLong(len(ids), max_new_tokens, limit)
    return Prompt(list(ids))


def fit_prompt(tokenizer, request: GenerationRequest, limit: int) -> Prompt:
    """The request's prompt as token ids, fitted to ``limit`` tokens of context.

    A request without ``max_new_tokens`` (None) gets the room the prompt leaves in the context, up to
    ``CHAT_MAX_NEW_TOKENS``. Also caps ``max_new_tokens`` to what its ``token_budget`` leaves after the prompt.

    Raises:
        BadRequest: ``context_length_exceeded``, or ``insufficient_credits`` (the prompt exceeds the budget).
    """
    wanted = 1 if request.max_new_tokens is None else request.max_new_tokens  # None: at least one must fit
    try:
        if request.messages is not None:
            prompt = chat_prompt(tokenizer, request.messages, wanted, limit, request.truncate)
        else:
            prompt = text_prompt(tokenizer, request.prompt or "", wanted, limit)
    except ContextTooLong as exc:
        raise BadRequest(str(exc), "messages", "context_length_exceeded") from None
    if request.max_new_tokens is None:
        request.max_new_tokens = min(limit - len(prompt.ids), settings.CHAT_MAX_NEW_TOKENS)
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


def _leading_system(messages: list[dict]) -> int:
    n = 0
    while n < len(messages) and messages[n]["role"] == "system":
        n += 1
    return n


def _render(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
