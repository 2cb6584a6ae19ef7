"""OpenAI's response objects (chat and text completions, whole or streamed), log-probabilities included.

The gateway reports log-probabilities in the chat shape (:mod:`portal.generation.logprobs`); ``/v1/completions``
answers in the legacy shape (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).
"""

from __future__ import annotations

import json
import time

FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


class Shape:
    """The response objects of one request.

    Args:
        chat: a chat completion (else a text completion).
        model: the model's id.
        request_id: the generation's id (the response ids derive from it).
        logprobs: whether the request asked for log-probabilities.
        prompt_chars: the raw prompt's length (text completions' ``text_offset`` count from there).
    """

    def __init__(self, chat: bool, model: str, request_id: str, logprobs: bool = False, prompt_chars: int = 0) -> None:
        self.chat, self.model, self.logprobs = chat, model, logprobs
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"
        self.created = int(time.time())
        self.offset = prompt_chars  # the next token's text_offset (text completions)

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "layerswarm"}  # fmt: skip

    def _logprobs(self, entries: list[dict] | None) -> dict | None:
        if not self.logprobs:
            return None
        entries = entries or []
        if self.chat:
            return {"content": entries, "refusal": None}
        offsets = []
        for e in entries:
            offsets.append(self.offset)
            self.offset += len(e["token"])
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets,
        }

    def whole(self, done: dict, entries: list[dict] | None = None) -> dict:
        """The non-streaming response (``entries``: the log-probabilities of every answer token)."""
        finish = FINISH.get(done.get("finish_reason"), "stop")
        logprobs = self._logprobs(entries)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": done.get("text", ""), "refusal": None},
                      "logprobs": logprobs, "finish_reason": finish}  # fmt: skip
            return {**self._base("chat.completion"), "choices": [choice], "usage": done.get("usage")}
        choice = {"index": 0, "text": done.get("text", ""), "logprobs": logprobs, "finish_reason": finish}
        return {**self._base("text_completion"), "choices": [choice], "usage": done.get("usage")}

    def chunk(
        self,
        text: str = "",
        role: bool = False,
        finish: str | None = None,
        usage: dict | None = None,
        entries: list[dict] | None = None,
    ) -> dict:
        """One streamed chunk (the first carries the role; a usage chunk has no choices; ``entries``: the
        log-probabilities of this piece's tokens)."""
        if usage is not None:
            return {**self._base("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                    "usage": usage}  # fmt: skip
        logprobs = self._logprobs(entries) if entries is not None else None
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if not finish else {})
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {**self._base("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {**self._base("text_completion"), "choices": [choice]}

    @staticmethod
    def sse(payload: dict) -> bytes:
        """A server-sent event."""
        return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
