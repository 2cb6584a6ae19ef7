"""``/ws/chat/``: the chat page's websocket. A thin adapter between the browser and the gateway.

Browser -> server (JSON):
- ``{"type": "send", "conversation": id|null, "content": text, "model": name, "settings": {...}}``
- ``{"type": "regenerate", "conversation": id, "model": name, "settings": {...}}``
- ``{"type": "stop"}``
Server -> browser: ``accepted`` (the stored question, the conversation id), ``started`` (prompt
size, oldest messages dropped), ``token`` (new text), ``done`` (the stored answer, usage, speed) or
``error`` (``code``, ``message``). Settings: ``temperature``, ``top_p``, ``max_new_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from portal.chat import conversations, spending
from portal.chat.conversations import NotFound, Owner
from portal.chat.gateway import ensure_embedded_gateway
from portal.chat.protocol import CONTROL_GROUP, BadRequest, GenerationRequest, cancel_message
from portal.chat.spending import OutOfCredits


@dataclass
class _Active:
    """The generation this socket is waiting for."""

    request: GenerationRequest
    conversation_id: int
    sent_at: float = field(default_factory=time.monotonic)
    started: bool = False
    first_token_s: float = 0.0
    text: str = ""
    dropped: int = 0  # old messages not even sent to the gateway (over the request limits)
    messages: int = 0  # token messages received (the browser test checks the answer streamed)
    watchdog: asyncio.Task | None = None


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One browser tab's chat: one generation at a time; Stop and a dropped socket cancel it."""

    async def connect(self) -> None:
        session = self.scope.get("session")
        self.owner = Owner.of(self.scope.get("user"), getattr(session, "session_key", None))
        self.active: _Active | None = None
        self.stopped: dict[str, int] = {}  # request id -> answer id, until the gateway reports its usage
        await self.accept()
        ensure_embedded_gateway()

    async def disconnect(self, code: int) -> None:
        await self._cancel()

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        """Parse one browser message; anything malformed gets an ``error`` reply, never a crash."""
        raw = text_data if text_data is not None else bytes_data or b""
        if len(raw) > settings.CHAT_MAX_WS_MESSAGE_BYTES:
            return await self._error("too_large", f"messages are limited to {settings.CHAT_MAX_WS_MESSAGE_BYTES} bytes")
        try:
            content = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return await self._error("bad_json", "send JSON objects")
        if not isinstance(content, dict):
            return await self._error("bad_json", "send JSON objects")
        kind = content.get("type")
        if kind == "stop":
            return await self._stop()
        if kind in ("send", "regenerate"):
            return await self._generate(content, regenerate=kind == "regenerate")
        return await self._error("unknown_type", "type must be send, regenerate or stop")

    async def _generate(self, content: dict, regenerate: bool) -> None:
        if self.active is not None:
            return await self._error("busy", "wait for the answer or press Stop first")
        if not self.owner.known:
            return await self._error("no_session", "enable cookies or log in to chat")
        text = content.get("content")
        options = content.get("settings") or {}
        if not isinstance(options, dict):
            return await self._error("invalid_value", "settings must be an object")
        if not regenerate and (not isinstance(text, str) or not text.strip()):
            return await self._error("invalid_value", "type a message first")
        try:
            request = GenerationRequest(
                model=content.get("model") or settings.CHAT_DEFAULT_MODEL,
                messages=[{"role": "user", "content": text if isinstance(text, str) else ""}],
                max_new_tokens=options.get("max_new_tokens", settings.CHAT_DEFAULT_MAX_NEW_TOKENS),
                temperature=options.get("temperature", 0.7),
                top_p=options.get("top_p", 1.0),
                seed=options.get("seed"),
                truncate=True,
                reply_to=self.channel_name,
            )
            conversation, question, history, dropped, allowed = await _store_question(
                self.owner, content.get("conversation"), request.model, text, regenerate, self._client_ip()
            )
        except (BadRequest, NotFound, OutOfCredits) as exc:
            return await self._error(_code(exc), str(exc))
        request.messages = history
        request.token_budget = allowed
        request.prefix_salt = self.owner.prefix_salt
        self.active = _Active(request, conversation.pk, dropped=dropped)
        await self.send_json(
            {
                "type": "accepted",
                "conversation": {"id": conversation.pk, "title": conversation.title, "model": conversation.model},
                "question": question.as_dict() if question else None,
            }
        )
        await self.channel_layer.send(settings.CHAT_GATEWAY_CHANNEL, request.to_message())
        self.active.watchdog = asyncio.create_task(self._watch(request.id))

    async def _watch(self, request_id: str) -> None:
        """No gateway took the request in time (none running, or all busy for too long): say so."""
        await asyncio.sleep(settings.CHAT_GATEWAY_TIMEOUT)
        if self.active is not None and self.active.request.id == request_id and not self.active.started:
            await self._cancel()
            await self._error("gateway_unavailable", "no gateway answered: the chat service is down or overloaded")

    def _client_ip(self) -> str:
        client = self.scope.get("client") or ("", 0)
        return str(client[0])

    async def _stop(self) -> None:
        active = self.active
        if active is None:
            return
        await self._cancel()
        message = await self._finish(active, {"text": active.text, "finish_reason": "cancelled", "usage": None})
        self.stopped = {**dict(list(self.stopped.items())[-8:]), active.request.id: message.pk}

    async def _cancel(self) -> None:
        active, self.active = self.active, None
        if active is None:
            return
        if active.watchdog is not None and active.watchdog is not asyncio.current_task():
            active.watchdog.cancel()
        await self.channel_layer.group_send(CONTROL_GROUP, cancel_message(active.request.id))

    def _mine(self, event: dict) -> _Active | None:
        active = self.active
        return active if active is not None and event.get("id") == active.request.id else None

    # -- replies from the gateway (late ones for a stopped request are ignored) -----------------

    async def gateway_started(self, event: dict) -> None:
        """The gateway took the request and built the prompt."""
        if (active := self._mine(event)) is None:
            return
        active.started = True
        await self.send_json(
            {
                "type": "started",
                "conversation": active.conversation_id,
                "prompt_tokens": event.get("prompt_tokens", 0),
                "dropped_messages": active.dropped + event.get("dropped_messages", 0),
            }
        )

    async def gateway_token(self, event: dict) -> None:
        """New text of the answer."""
        if (active := self._mine(event)) is None:
            return
        if not active.first_token_s:
            active.first_token_s = time.monotonic() - active.sent_at
        active.text += event.get("text", "")
        active.messages += 1
        await self.send_json({"type": "token", "conversation": active.conversation_id, "text": event.get("text", "")})

    async def gateway_done(self, event: dict) -> None:
        """The answer is complete (EOS, stop string, length, or cancelled)."""
        if (message_id := self.stopped.pop(event.get("id"), None)) is not None:
            return await _charge_stopped(self.owner, self._client_ip(), message_id, event)
        if (active := self._mine(event)) is None:
            return
        self.active = None
        if active.watchdog is not None:
            active.watchdog.cancel()
        await self._finish(active, event)

    async def gateway_error(self, event: dict) -> None:
        """The gateway could not serve the request."""
        if (active := self._mine(event)) is None:
            return
        self.active = None
        if active.watchdog is not None:
            active.watchdog.cancel()
        await self._error(event.get("code", "error"), event.get("message", "the request failed"))

    async def _finish(self, active: _Active, event: dict):
        usage = event.get("usage") or {}
        stats = {
            "finish_reason": event.get("finish_reason", "stop"),
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "tokens_per_s": float(event.get("tokens_per_s", 0) or 0),
            "dropped_messages": active.dropped + int(event.get("dropped_messages", 0) or 0),
        }
        text = event.get("text", active.text) if stats["finish_reason"] != "cancelled" else active.text
        message = await _store_answer(self.owner, self._client_ip(), active, text, stats)
        await self.send_json(
            {
                "type": "done",
                "conversation": active.conversation_id,
                "message": message.as_dict(),
                "usage": usage or None,
                "ttft_s": round(active.first_token_s, 3),
                "token_messages": active.messages,
            }
        )
        return message

    async def _error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})


@database_sync_to_async
def _store_question(owner: Owner, conversation_id, model: str, text, regenerate: bool, ip: str):
    from portal.swarm.models import SwarmModel

    if not SwarmModel.objects.filter(name=model).exists():
        raise BadRequest(f"unknown model {model!r}", "model", "model_not_found", 404)
    allowed = spending.tokens_allowed(owner, ip)
    if regenerate:
        conversation = conversations.prepare_regenerate(owner, conversation_id)
        question = None
    else:
        if conversation_id is not None and not isinstance(conversation_id, int):
            raise NotFound("no such conversation")
        conversation, question = conversations.add_question(owner, conversation_id, model, text)
    history, dropped = conversations.history(conversation, settings.CHAT_MAX_MESSAGES, settings.CHAT_MAX_INPUT_CHARS)
    return conversation, question, history, dropped, allowed


@database_sync_to_async
def _store_answer(owner: Owner, ip: str, active: _Active, text: str, stats: dict):
    from portal.chat.models import Conversation

    conversation = Conversation.objects.get(pk=active.conversation_id)
    message = conversations.add_answer(conversation, text, **stats)
    tokens = stats["prompt_tokens"] + stats["completion_tokens"]
    spending.charge(owner, ip, tokens, f"chat:{active.request.id}")
    return message


@database_sync_to_async
def _charge_stopped(owner: Owner, ip: str, message_id: int, event: dict) -> None:
    """The gateway's usage report of an answer the user stopped: record the counts and charge them."""
    from portal.chat.models import Message

    usage = event.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    Message.objects.filter(pk=message_id).update(prompt_tokens=prompt, completion_tokens=completion)
    spending.charge(owner, ip, prompt + completion, f"chat:{event.get('id')}")


def _code(exc: Exception) -> str:
    if isinstance(exc, BadRequest):
        return exc.code
    if isinstance(exc, NotFound):
        return "not_found"
    return "insufficient_credits"
