"""The requester's side of one generation: send the request to the gateways, read the replies, cancel.

Both the chat consumer and the OpenAI API views use it, so a request that no gateway takes, or that
goes silent, ends the same way everywhere (:class:`GatewayTimeout`), and leaving early always cancels.
"""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer
from django.conf import settings

from portal.generation.gateway import ensure_embedded_gateway
from portal.generation.protocol import CONTROL_GROUP, GenerationRequest, cancel_message

FINAL = ("gateway.done", "gateway.error")


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
        self.started = False
        self.cancelled = False

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

    async def cancel(self) -> None:
        """Stop the generation wherever it runs (or before it starts); its final event still comes."""
        if not self.cancelled and not self.finished:
            self.cancelled = True
            await asyncio.shield(self.layer.group_send(CONTROL_GROUP, cancel_message(self.request.id)))

    async def close(self) -> None:
        """Done with this call: a generation that has not finished is cancelled."""
        await self.cancel()
