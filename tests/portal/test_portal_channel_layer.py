"""The channel layer (in-memory embedded, Redis in production) carries group messages."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer


def test_it_delivers_group_messages():
    async def roundtrip():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("swarm-health-test", channel)
        await layer.group_send("swarm-health-test", {"type": "health.changed", "model": "smollm2"})
        message = await layer.receive(channel)
        await layer.group_discard("swarm-health-test", channel)
        return message

    assert async_to_sync(roundtrip)() == {"type": "health.changed", "model": "smollm2"}
