"""The gateway outlives its channel layer's failures: a failing receive is retried, a failed control loop is
restarted (cancels keep working), and it never exits on such an error. A real gateway on the real in-memory
channel layer, with failures injected into the layer; the swarm is not needed (no node covers the model)."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from portal.generation import Gateway, GenerationRequest
from portal.generation.pool import SwarmUnavailable
from portal.generation.protocol import CONTROL_GROUP, cancel_message

pytestmark = pytest.mark.django_db(transaction=True)


class FlakyLayer(InMemoryChannelLayer):
    """The in-memory layer, whose receive fails ``failures[prefix]`` times for channels starting with prefix."""

    failures: dict[str, int] = {}

    async def receive(self, channel):
        for prefix, left in self.failures.items():
            if channel.startswith(prefix) and left > 0:
                self.failures[prefix] = left - 1
                await asyncio.sleep(0.01)
                raise ConnectionError("Redis went away")
        return await super().receive(channel)


class NoSwarm:
    """A pool whose model no node covers (the gateway answers ``swarm_unavailable``)."""

    def get(self, model: str):
        raise SwarmUnavailable(f"no node serves {model}")


@pytest.fixture
def flaky_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": f"{__name__}.FlakyLayer"}}
    settings.CHAT_GATEWAY_EMBEDDED = False
    FlakyLayer.failures = {}
    yield FlakyLayer
    FlakyLayer.failures = {}


async def _ask(layer, request_id: str | None = None) -> dict:
    named = {"id": request_id} if request_id else {}
    request = GenerationRequest(model="smollm2", prompt="hi", max_new_tokens=4, **named)
    request.reply_to = await layer.new_channel()
    await layer.send("chat-gateway", request.to_message())
    return await asyncio.wait_for(layer.receive(request.reply_to), 10)


def test_it_keeps_serving_after_the_channel_layer_fails(flaky_layer):
    async def scenario():
        layer = get_channel_layer()
        flaky_layer.failures = {"chat-gateway": 3}  # three failed reads of the request channel in a row
        gateway = Gateway(NoSwarm(), concurrency=2)
        task = asyncio.create_task(gateway.run())
        try:
            reply = await _ask(layer)
            assert not task.done()  # before the fix, the first failure ended the gateway
            return reply, flaky_layer.failures["chat-gateway"]
        finally:
            task.cancel()

    reply, left = async_to_sync(scenario)()
    assert left == 0 and reply["type"] == "gateway.error" and reply["code"] == "swarm_unavailable"


def test_it_restarts_a_failed_control_loop_and_cancels_still_arrive(flaky_layer):
    async def scenario():
        layer = get_channel_layer()
        flaky_layer.failures = {"gateway-control.": 2}  # the control loop dies twice
        gateway = Gateway(NoSwarm(), concurrency=2)
        task = asyncio.create_task(gateway.run())
        try:
            for _ in range(100):
                if gateway.restarts.get("control", 0) >= 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the restarted loop rejoins the control group
            await layer.group_send(CONTROL_GROUP, cancel_message("stopped-early"))
            await asyncio.sleep(0.2)
            return gateway.restarts, await _ask(layer, "stopped-early")
        finally:
            task.cancel()

    restarts, reply = async_to_sync(scenario)()
    assert restarts["control"] == 2
    # The cancel reached the restarted control loop: the request is answered 'cancelled', never generated.
    assert reply["type"] == "gateway.done" and reply["finish_reason"] == "cancelled"
