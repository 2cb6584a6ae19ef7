"""One generation requested over the channel layer by code that is not a consumer (the OpenAI API views)."""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer
from django.conf import settings

from portal.chat.gateway import ensure_embedded_gateway
from portal.chat.protocol import CONTROL_GROUP, GenerationRequest, cancel_message

FINAL = ("gateway.done", "gateway.error")


class GatewayTimeout(Exception):
    """No gateway took the request, or a running generation went silent."""


class GatewayCall:
    """``async with GatewayCall(request) as call: event = await call.next_event()``.

    Sends ``request`` with a fresh reply channel; leaving the block before the final event (an error,
    a client that disconnected mid-stream) cancels the generation.
    """

    def __init__(self, request: GenerationRequest, token_timeout: float = 120.0) -> None:
        self.request = request
        self.token_timeout = token_timeout
        self.finished = False
        self.started = False

    async def __aenter__(self) -> GatewayCall:
        self.layer = get_channel_layer()
        self.request.reply_to = await self.layer.new_channel("api-reply.")
        ensure_embedded_gateway()
        await self.layer.send(settings.CHAT_GATEWAY_CHANNEL, self.request.to_message())
        return self

    async def next_event(self) -> dict:
        """The next reply for this request (``gateway.started``, ``.token``, ``.done`` or ``.error``).

        Raises:
            GatewayTimeout: nothing came in time.
        """
        timeout = self.token_timeout if self.started else settings.CHAT_GATEWAY_TIMEOUT
        while True:
            try:
                event = await asyncio.wait_for(self.layer.receive(self.request.reply_to), timeout)
            except TimeoutError:
                raise GatewayTimeout(
                    "no gateway answered: the chat service is down or overloaded"
                    if not self.started
                    else "the generation stalled"
                ) from None
            if event.get("id") != self.request.id:
                continue
            self.started = True
            self.finished = event.get("type") in FINAL
            return event

    async def __aexit__(self, *exc) -> None:
        if not self.finished:
            await asyncio.shield(self.layer.group_send(CONTROL_GROUP, cancel_message(self.request.id)))
