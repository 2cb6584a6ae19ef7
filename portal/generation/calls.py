"""The requester's side of one generation: send the request to the gateways, read the replies, cancel.

Both the chat consumer and the OpenAI API views use it, so a request that no gateway takes, or whose
gateway dies (no ``gateway.alive`` heartbeat for ``CHAT_GATEWAY_DEADLINE`` seconds), ends the same way
everywhere (:class:`GatewayTimeout`, then :meth:`GatewayCall.give_up` settles the reservation with what
was seen), and leaving early always cancels (the gateway then charges what it generated).
"""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from portal.generation import reservations
from portal.generation.gateway import ensure_embedded_gateway
from portal.generation.protocol import CONTROL_GROUP, GenerationRequest, cancel_message

FINAL = ("gateway.done", "gateway.error")
NOT_TAKEN = "no gateway answered: the chat service is down or overloaded"
DIED = "the gateway stopped answering mid-answer (it died or lost its link)"


class GatewayTimeout(Exception):
    """No gateway took the request, or a running generation went silent."""


class GatewayCall:
    """``async with GatewayCall(request) as call: event = await call.next_event()``.

    Sends ``request`` with a fresh reply channel; leaving the block before the final event (an error,
    a client that disconnected mid-stream) cancels the generation. Without a block: ``open()`` ...
    ``close()``.

    Args:
        request: the admitted request (its ``reply_to`` is set here).
        token_timeout: seconds a started generation may stay silent; None: no limit (the chat page,
            where the user has a Stop button).
    """

    def __init__(self, request: GenerationRequest, token_timeout: float | None = 120.0) -> None:
        self.request = request
        self.token_timeout = token_timeout
        self.finished = False
        self.started = False  # a gateway answered (a heartbeat counts)
        self.cancelled = False
        self.withdrawn = False  # the hold was given back (or settled) from this side
        self.prompt_tokens = 0  # what the replies said was used so far: charged if the gateway dies
        self.completion_tokens = 0

    async def __aenter__(self) -> GatewayCall:
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def open(self) -> None:
        """Send the request to whichever gateway is free (starting the embedded one if need be)."""
        self.layer = get_channel_layer()
        # The default prefix on purpose: on Redis, each prefix is one list that a single receive at a time
        # blocks on for seconds, so replies on a prefix of their own would wait behind the websocket
        # consumers' receive; on theirs ("specific"), that one receive fetches them too.
        self.request.reply_to = await self.layer.new_channel()
        ensure_embedded_gateway()
        await self.layer.send(settings.CHAT_GATEWAY_CHANNEL, self.request.to_message())

    async def next_event(self) -> dict:
        """The next reply for this request (``gateway.started``, ``.token``, ``.done`` or ``.error``).

        Heartbeats (``gateway.alive``) are not returned: they only keep the call from timing out.

        Raises:
            GatewayTimeout: no gateway took the request in time, the gateway went silent for
                ``CHAT_GATEWAY_DEADLINE`` (died), or no text came for ``token_timeout``.
        """
        progress = time.monotonic()
        while True:
            if not self.started:
                timeout, why = (
                    settings.CHAT_GATEWAY_TIMEOUT,
                    "no gateway answered: the chat service is down or overloaded",
                )
            else:
                timeout, why = (
                    settings.CHAT_GATEWAY_DEADLINE,
                    "the gateway stopped answering (it died or lost its link)",
                )
                if self.token_timeout is not None:
                    left = self.token_timeout - (time.monotonic() - progress)
                    timeout, why = (left, "the generation stalled") if left < timeout else (timeout, why)
            try:
                event = await asyncio.wait_for(self.layer.receive(self.request.reply_to), max(0.0, timeout))
            except TimeoutError:
                raise GatewayTimeout(why) from None
            if event.get("id") != self.request.id:
                continue
            self.started = True
            if event.get("type") == "gateway.alive":
                continue
            self._count(event)
            self.finished = event.get("type") in FINAL
            return event

    def _count(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "gateway.started" and isinstance(event.get("prompt_tokens"), int):
            self.prompt_tokens = event["prompt_tokens"]
        elif kind == "gateway.token" and isinstance(event.get("completion_tokens"), int):
            self.completion_tokens = max(self.completion_tokens, event["completion_tokens"])

    @property
    def tokens_seen(self) -> int:
        """Prompt and answer tokens the gateway reported using so far."""
        return self.prompt_tokens + self.completion_tokens

    async def give_up(self) -> int:
        """The gateway is gone (:class:`GatewayTimeout`): cancel, and settle the reservation with the tokens
        seen (a request no gateway took is released). Returns the tokens charged."""
        await self.cancel()
        reference = self.request.reservation
        if not reference or self.withdrawn:
            return 0
        self.withdrawn = True
        return await sync_to_async(reservations.abandon)(reference, self.tokens_seen)

    async def cancel(self) -> None:
        """Stop the generation wherever it runs (or before it starts); its final event still comes."""
        if not self.cancelled and not self.finished:
            self.cancelled = True
            await asyncio.shield(self.layer.group_send(CONTROL_GROUP, cancel_message(self.request.id)))

    async def close(self) -> None:
        """Done with this call: a generation that has not finished is cancelled; a request no gateway has
        answered yet gives its hold back (a gateway that takes it later finds it withdrawn and skips it)."""
        await self.cancel()
        if not self.started and not self.finished and self.request.reservation and not self.withdrawn:
            self.withdrawn = True
            await asyncio.shield(sync_to_async(reservations.abandon)(self.request.reservation, 0))
