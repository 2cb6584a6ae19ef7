"""What daphne (chat consumer, OpenAI API views) and the gateway say to each other over the channel layer.

- A request goes to the shared channel ``settings.CHAT_GATEWAY_CHANNEL``: every gateway worker reads
  from it, so whichever is free takes it (with Redis, several gateways on several machines share it).
- A cancel goes to the group ``CONTROL_GROUP``, which every gateway joins; the one running the
  request stops it, the others ignore it (a gateway also remembers cancels of requests it has not
  received yet, so a request stopped while still queued never starts).
- Replies go to the requester's own channel (``reply_to``), in order: ``gateway.started``, any
  number of ``gateway.token`` (``text``, ``completion_tokens`` generated so far and, when the request asked
  for ``logprobs``, the ``logprobs`` entries of the tokens since the last piece), then exactly one
  ``gateway.done`` or ``gateway.error``; ``gateway.alive`` comes every ``CHAT_GATEWAY_HEARTBEAT``
  seconds in between, so a requester that hears nothing for ``CHAT_GATEWAY_DEADLINE`` knows the gateway died.
- The gateway settles the request's reservation (what it generated is charged) before ``gateway.done``,
  and also when the generation is stopped, the requester leaves or the swarm fails.

:class:`GenerationRequest` validates everything a browser or an API client can set, so the
consumer, the API and the gateway all refuse the same bad input with the same message.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, field

from django.conf import settings

CONTROL_GROUP = "chat-gateway-control"
ROLES = ("system", "user", "assistant")
MAX_TOP_LOGPROBS = 20  # OpenAI's own limit


class BadRequest(ValueError):
    """A request that cannot be served as given.

    Attributes:
        code: machine-readable reason (``invalid_value``, ``context_length_exceeded`` ...).
        param: the offending parameter, if any.
        status: the HTTP status the OpenAI API answers with.
    """

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value", status: int = 400):
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


@dataclass
class GenerationRequest:
    """One generation the gateway runs.

    Either ``messages`` (chat: the model's chat template builds the prompt) or ``prompt`` (raw text).
    ``temperature == 0`` means greedy decoding.
    """

    model: str
    messages: list[dict] | None = None
    prompt: str | None = None
    max_new_tokens: int | None = 256  # None: the room the prompt leaves in the context (up to CHAT_MAX_NEW_TOKENS)
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False  # report each answer token's log-probability (of the model, before temperature)
    top_logprobs: int = 0  # and this many most likely alternatives at each position (0 to MAX_TOP_LOGPROBS)
    token_budget: int = 0  # >0: prompt + answer may not exceed this (what the requester can pay for)
    truncate: bool = False  # drop the oldest turns to fit the context (the chat page) instead of refusing
    prefix_salt: str = ""  # the requester's salt for the nodes' prompt-prefix reuse (§4.9 of the wire spec)
    reservation: str = ""  # what admission held for it (portal.generation.reservations); the gateway settles it
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    reply_to: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field against the limits in settings.

        Raises:
            BadRequest: the first problem found.
        """
        if not isinstance(self.model, str) or not self.model:
            raise BadRequest("model must be a model name", "model")
        if (self.messages is None) == (self.prompt is None):
            raise BadRequest("give either messages or prompt", "messages")
        limit = settings.CHAT_MAX_INPUT_CHARS
        if self.messages is not None:
            if not isinstance(self.messages, list) or not self.messages:
                raise BadRequest("messages must be a non-empty list", "messages")
            if len(self.messages) > settings.CHAT_MAX_MESSAGES:
                raise BadRequest(f"at most {settings.CHAT_MAX_MESSAGES} messages", "messages")
            clean = []
            for i, m in enumerate(self.messages):
                if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                    raise BadRequest(
                        f"messages[{i}] must be {{'role': one of {', '.join(ROLES)}, 'content': text}}", "messages"
                    )
                clean.append({"role": m["role"], "content": m["content"]})
            if sum(len(m["content"]) for m in clean) > limit:
                raise BadRequest(f"messages are longer than {limit} characters in all", "messages", "too_long")
            self.messages = clean
        elif not isinstance(self.prompt, str):
            raise BadRequest("prompt must be a string", "prompt")
        elif len(self.prompt) > limit:
            raise BadRequest(f"prompt is longer than {limit} characters", "prompt", "too_long")
        most = settings.CHAT_MAX_NEW_TOKENS
        if self.max_new_tokens is not None and (
            not _is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= most
        ):
            raise BadRequest(f"max_tokens must be an integer from 1 to {most}", "max_tokens")
        if not isinstance(self.logprobs, bool):
            raise BadRequest("logprobs must be true or false", "logprobs")
        if not _is_int(self.top_logprobs) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise BadRequest(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
        if self.top_logprobs and not self.logprobs:
            raise BadRequest("top_logprobs needs logprobs=true", "top_logprobs")
        if not _is_number(self.temperature) or not 0 <= self.temperature <= 2:
            raise BadRequest("temperature must be a number from 0 to 2", "temperature")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise BadRequest("top_p must be a number in (0, 1]", "top_p")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise BadRequest("seed must be a non-negative integer", "seed")
        if not isinstance(self.prefix_salt, str) or len(self.prefix_salt) > 128:
            raise BadRequest("prefix_salt must be a string of at most 128 characters", "prefix_salt")
        if not isinstance(self.reservation, str) or len(self.reservation) > 80:
            raise BadRequest("reservation must be a string of at most 80 characters", "reservation")
        if not _is_int(self.token_budget) or self.token_budget < 0:
            raise BadRequest("token_budget must be a non-negative integer", "token_budget")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if (
            not isinstance(self.stop, list)
            or len(self.stop) > 4
            or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in self.stop)
        ):
            raise BadRequest("stop must be up to 4 non-empty strings of at most 64 characters", "stop")

    def to_message(self) -> dict:
        """The channel-layer message for the gateway."""
        return {"type": "gateway.generate", **asdict(self)}

    @classmethod
    def from_message(cls, message: dict) -> GenerationRequest:
        """Parse a channel-layer message (the gateway does not trust it more than the API does).

        Raises:
            BadRequest: missing or invalid fields.
        """
        names = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in message.items() if k in names})
        except TypeError as exc:
            raise BadRequest(f"malformed request: {exc}") from None


def cancel_message(request_id: str) -> dict:
    """The group message that stops request ``request_id`` wherever it runs."""
    return {"type": "gateway.cancel", "id": request_id}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
