"""``/ws/chat/``: the chat page's websocket. A thin adapter between the browser and the gateway.

Browser -> server (JSON):
- ``{"type": "send", "conversation": id|null, "content": text, "model": name, "settings": {...},
  "system_prompt": text}``
- ``{"type": "regenerate", "conversation": id, "model": name, "settings": {...}, "system_prompt": text}``
  (``system_prompt``, optional, replaces the conversation's stored one; "" clears it)
- ``{"type": "stop"}``
Server -> browser: ``accepted`` (the stored question, the conversation id), ``started`` (prompt
size, oldest messages dropped), ``token`` (new text), ``done`` (the stored answer, usage, speed) or
``error`` (``code``, ``message``; ``answer``: the partial answer stored when the gateway died or the swarm
failed mid-answer, code ``gateway_unavailable`` or the gateway's). Settings: ``temperature``, ``top_p``,
``max_new_tokens``. The gateway charges every token it generates (also after Stop or a dropped socket).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from portal.chat import turns
from portal.chat.conversations import NotFound, Owner
from portal.generation import (
    BadRequest,
    GatewayCall,
    GatewayTimeout,
    GenerationRequest,
    OutOfCredits,
    ensure_embedded_gateway,
)

log = logging.getLogger("portal.chat")
DISCONNECT_CLEANUP_S = 10.0


@dataclass
class _Active:
    """One generation this socket asked for, and what the browser has been shown of it."""

    call: GatewayCall
    conversation_id: int
    sent_at: float = field(default_factory=time.monotonic)
    first_token_s: float = 0.0
    text: str = ""
    dropped: int = 0  # old messages not even sent to the gateway (over the request limits)
    messages: int = 0  # token messages received (the browser test checks the answer streamed)
    stopped: asyncio.Future | None = None  # Stop pressed: the stored partial answer's id, once stored

    @property
    def request(self) -> GenerationRequest:
        """The request as sent to the gateways."""
        return self.call.request


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One browser tab's chat: one generation at a time; Stop and a dropped socket cancel it."""

    async def connect(self) -> None:
        """Accept the socket for the scope's user or session (and start the embedded gateway, if any)."""
        session = self.scope.get("session")
        self.owner = Owner.of(self.scope.get("user"), getattr(session, "session_key", None))
        self.active: _Active | None = None
        self.follows: set[asyncio.Task] = set()  # a task per generation still to hear from
        await self.accept()
        ensure_embedded_gateway()

    async def disconnect(self, code: int) -> None:
        """Cancel the running generation and stop listening for the stopped ones' usage reports."""
        active, self.active = self.active, None
        if active is not None:
            await active.call.cancel()
        tasks = list(self.follows)
        for task in tasks:
            task.cancel()
        if tasks:  # let them give back or settle their holds before the socket is gone (bounded: a slow database)
            await asyncio.wait(tasks, timeout=DISCONNECT_CLEANUP_S)

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
            )
            question = await database_sync_to_async(turns.ask)(
                self.owner, content.get("conversation"), request, text, regenerate, self._client_ip(),
                system_prompt=content.get("system_prompt"),
            )  # fmt: skip
        except (BadRequest, NotFound, OutOfCredits) as exc:
            return await self._error(_code(exc), str(exc))
        conversation = question.conversation
        call = GatewayCall(request, token_timeout=None)  # no stall limit: the user has a Stop button
        active = self.active = _Active(call, conversation.pk, dropped=question.dropped)
        await active.call.open()  # the gateway starts on it while the browser hears that it was accepted
        await self.send_json(
            {
                "type": "accepted",
                "conversation": {
                    "id": conversation.pk,
                    "title": conversation.title,
                    "model": conversation.model,
                    "system_prompt": conversation.system_prompt,
                },
                "question": question.message.as_dict() if question.message else None,
            }
        )
        task = asyncio.create_task(self._follow(active))
        self.follows.add(task)
        task.add_done_callback(self.follows.discard)

    async def _follow(self, active: _Active) -> None:
        """Hand the gateway's replies for ``active`` to the browser, until the final one."""
        try:
            while not active.call.finished:
                event = await active.call.next_event()
                await self._on_reply(active, event)
        except GatewayTimeout as exc:  # no gateway took the request in time, or its gateway died mid-answer
            try:
                await active.call.give_up()  # released, or charged for what the replies said was generated
            except Exception:  # the database is down: the hold expires (CHAT_RESERVATION_TTL); the page still hears
                log.exception("settling the abandoned request %s failed", active.call.request.id)
            if self.active is active:
                self.active = None
                partial = await self._store_partial(active, "error") if active.call.started else None
                await self._error("gateway_unavailable", str(exc), answer=partial)
        finally:
            await active.call.close()

    async def _store_partial(self, active: _Active, reason: str) -> dict | None:
        """Store what the browser was shown of an answer that ended early; None when nothing was."""
        if not active.text:
            return None
        call = active.call
        usage = {"prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens}
        message = await database_sync_to_async(turns.answer)(
            active.conversation_id, active.text, finish_reason=reason, **usage, dropped_messages=active.dropped
        )
        return message.as_dict()

    def _client_ip(self) -> str:
        client = self.scope.get("client") or ("", 0)
        return str(client[0])

    async def _stop(self) -> None:
        active, self.active = self.active, None
        if active is None:
            return
        active.stopped = asyncio.get_running_loop().create_future()
        await active.call.cancel()
        message = await self._finish(active, {"text": active.text, "finish_reason": "cancelled", "usage": None})
        active.stopped.set_result(message.pk)

    async def _on_reply(self, active: _Active, event: dict) -> None:
        """One reply of the gateway; late ones of a stopped request only report its usage."""
        kind = event.get("type")
        if active.stopped is not None:
            if kind == "gateway.done":
                message_id = await active.stopped
                await database_sync_to_async(turns.record_stopped_usage)(message_id, event.get("usage"))
            return
        handler = {
            "gateway.started": self._started,
            "gateway.token": self._token,
            "gateway.done": self._done,
            "gateway.error": self._failed,
        }.get(kind)
        if handler is not None and self.active is active:
            await handler(active, event)

    async def _started(self, active: _Active, event: dict) -> None:
        """The gateway took the request and built the prompt."""
        await self.send_json(
            {
                "type": "started",
                "conversation": active.conversation_id,
                "prompt_tokens": event.get("prompt_tokens", 0),
                "dropped_messages": active.dropped + event.get("dropped_messages", 0),
            }
        )

    async def _token(self, active: _Active, event: dict) -> None:
        """New text of the answer."""
        if not active.first_token_s:
            active.first_token_s = time.monotonic() - active.sent_at
        active.text += event.get("text", "")
        active.messages += 1
        await self.send_json({"type": "token", "conversation": active.conversation_id, "text": event.get("text", "")})

    async def _done(self, active: _Active, event: dict) -> None:
        """The answer is complete (EOS, stop string, length, or cancelled)."""
        self.active = None
        await self._finish(active, event)

    async def _failed(self, active: _Active, event: dict) -> None:
        """The gateway could not serve the request (or the swarm failed mid-answer: the part shown is kept)."""
        self.active = None
        partial = await self._store_partial(active, "error")
        await self._error(event.get("code", "error"), event.get("message", "the request failed"), answer=partial)

    async def _finish(self, active: _Active, event: dict):
        """Store the answer and show it (also the partial answer when the user pressed Stop)."""
        usage = event.get("usage") or {}
        stats = {
            "finish_reason": event.get("finish_reason", "stop"),
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "tokens_per_s": float(event.get("tokens_per_s", 0) or 0),
            "dropped_messages": active.dropped + int(event.get("dropped_messages", 0) or 0),
        }
        text = event.get("text", active.text) if stats["finish_reason"] != "cancelled" else active.text
        message = await database_sync_to_async(turns.answer)(active.conversation_id, text, **stats)
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

    async def _error(self, code: str, message: str, **extra) -> None:
        extra = {k: v for k, v in extra.items() if v is not None}
        await self.send_json({"type": "error", "code": code, "message": message, **extra})


def _code(exc: Exception) -> str:
    if isinstance(exc, BadRequest):
        return exc.code
    if isinstance(exc, NotFound):
        return "not_found"
    return "insufficient_credits"
