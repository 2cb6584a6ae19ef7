"""On the Redis channel layer (production), an idle chat socket stays open (the redis-py socket timeout
must outlast channels_redis's blocking pop); skipped in the embedded run."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (the run on services)")
def test_it_keeps_an_idle_socket_open_on_redis(owner, chat_socket):
    ws = chat_socket(owner)

    async def scenario():
        assert (await ws.connect())[0]
        await asyncio.sleep(7)  # longer than channels_redis's 5 s blocking pop
        await ws.send_to(text_data="not json")
        reply = await ws.receive_json_from(timeout=10)
        await ws.disconnect()
        return reply

    assert async_to_sync(scenario)()["code"] == "bad_json"
