"""Holds and limits through the chat websocket, with no gateway running (nothing is generated): an account
cannot open more generations at once than allowed, and a request nobody took gives its hold back."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.apps import apps

from portal.generation import reservations
from portal.ledger.books import deposit

pytestmark = pytest.mark.django_db(transaction=True)
ASK = {"type": "send", "content": "Hello?", "settings": {"max_new_tokens": 50}}


@pytest.fixture(autouse=True)
def _no_gateway(settings):
    settings.CHAT_GATEWAY_EMBEDDED = False  # requests wait in the channel: each socket holds one generation


def _holds(**filters) -> list[tuple[str, int]]:
    rows = apps.get_model("chat", "Reservation").objects.filter(**filters).order_by("pk")
    return list(rows.values_list("state", "used"))


def test_it_refuses_more_generations_at_once_than_the_limit_across_sockets(owner, smollm2, chat_socket, settings):
    settings.CHAT_MAX_GENERATIONS_PER_USER = 3
    deposit(owner, 1_000_000, "enough-for-many")  # the limit, not the balance, must refuse the fourth
    sockets = [chat_socket(owner) for _ in range(4)]  # one tab each: the one-at-a-time rule is per socket

    async def attack():
        replies = []
        for ws in sockets:
            assert (await ws.connect())[0]
            await ws.send_json_to(ASK)
            replies.append(await ws.receive_json_from(timeout=10))
        for ws in sockets:
            await ws.disconnect()
        return replies

    replies = async_to_sync(attack)()
    assert [r["type"] for r in replies] == ["accepted"] * 3 + ["error"]
    assert replies[3]["code"] == "too_many_generations"
    assert _holds(user_id=owner.pk) == [("settled", 0)] * 3  # no gateway took them: given back on disconnect


def test_it_gives_back_the_hold_of_a_request_no_gateway_took_when_the_socket_drops(owner, smollm2, chat_socket):
    ws = chat_socket(owner)

    async def scenario():
        await ws.connect()
        await ws.send_json_to(ASK)
        accepted = await ws.receive_json_from(timeout=10)
        held = await _held(owner)
        await ws.disconnect()
        return accepted, held

    accepted, held = async_to_sync(scenario)()
    assert accepted["type"] == "accepted" and held == [("open", 0)]
    assert _holds(user_id=owner.pk) == [("settled", 0)]
    reference = apps.get_model("chat", "Reservation").objects.get().reference
    assert not reservations.claim(reference)  # a gateway that takes the request now does not generate it


async def _held(owner):
    from channels.db import database_sync_to_async

    return await database_sync_to_async(_holds)(user_id=owner.pk)
