"""The chat websocket against a real 3-node swarm: streaming, Stop, a dropped socket, long conversations."""

from __future__ import annotations

import time

import pytest
import torch
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings

from portal.chat.models import Conversation, Message
from portal.generation.prompts import chat_prompt
from portal.ledger.books import balance_of
from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.testing.polling import wait_until
from tests.portal.chat.conftest import open_sessions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.model,
    pytest.mark.django_db(transaction=True),
    # On Redis the gateway runs as its own process (covered by tests/portal/api/test_openai_api.py and
    # bench-chat); a gateway inside the test's event loop on Redis does not receive requests (open issue).
    pytest.mark.skipif(bool(settings.REDIS_URL), reason="embedded gateway: the in-memory channel layer only"),
]
GREEDY = {"temperature": 0, "max_new_tokens": 24}


async def _until(ws, kind: str, timeout: float = 60) -> tuple[dict, list[dict]]:
    """Receive until a message of ``kind``; return it and everything received before it."""
    seen = []
    while True:
        message = await ws.receive_json_from(timeout=timeout)
        if message["type"] == kind:
            return message, seen
        assert message["type"] != "error", message
        seen.append(message)


def test_it_streams_the_answer_through_real_nodes_and_keeps_it(owner, smollm2, embedded_gateway, chat_socket, settings):
    question = "What is the capital of France?"

    ws = chat_socket(owner)

    async def scenario():
        assert (await ws.connect())[0]
        await ws.send_json_to({"type": "send", "conversation": None, "content": question, "settings": GREEDY})
        accepted = await ws.receive_json_from(timeout=10)
        assert accepted["type"] == "accepted" and accepted["question"]["content"] == question
        done, before = await _until(ws, "done")
        await ws.disconnect()
        return accepted, done, before

    accepted, done, before = async_to_sync(scenario)()
    tokens = [m["text"] for m in before if m["type"] == "token"]
    assert before[0]["type"] == "started" and before[0]["dropped_messages"] == 0
    assert len(tokens) > 1, "the answer must arrive in pieces"
    answer = done["message"]
    assert "".join(tokens) == answer["content"]
    assert "Paris" in answer["content"]
    assert answer["finish_reason"] == "stop" and done["token_messages"] == len(tokens)

    # Greedy output through the gateway equals the swarm client's own greedy output for the same prompt.
    client = AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=embedded_gateway.urls)
    ids = chat_prompt(client.tokenizer, [{"role": "user", "content": question}], 24, 8192).ids
    out = client.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, top_k=None)
    assert client.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True) == answer["content"]

    conversation = Conversation.objects.get(pk=accepted["conversation"]["id"])
    assert conversation.user == owner and conversation.title == question
    assert list(conversation.messages.values_list("role", "content")) == [
        ("user", question),
        ("assistant", answer["content"]),
    ]
    assert done["usage"]["completion_tokens"] == conversation.messages.last().completion_tokens > 1
    spent = settings.LEDGER_STARTING_GRANT - balance_of(owner)
    assert spent == done["usage"]["total_tokens"] * settings.LEDGER_CREDITS_PER_TOKEN  # charged once, in full


def test_it_stops_at_once_and_the_nodes_close_their_sessions(owner, smollm2, embedded_gateway, chat_socket):
    long_request = {"temperature": 0, "max_new_tokens": 400}

    ws = chat_socket(owner)

    async def scenario():
        await ws.connect()
        await ws.send_json_to(
            {"type": "send", "content": "Write a long story about a dragon.", "settings": long_request}
        )
        await _until(ws, "token")
        busy = await database_sync_to_async(open_sessions)(embedded_gateway.urls)
        pressed = time.monotonic()
        await ws.send_json_to({"type": "stop"})
        done, _ = await _until(ws, "done", timeout=5)
        stopped_in = time.monotonic() - pressed
        assert await ws.receive_nothing(timeout=1.0)  # no stray tokens after Stop
        await ws.disconnect()
        return busy, done, stopped_in

    busy, done, stopped_in = async_to_sync(scenario)()
    assert busy == [1, 1, 1]
    assert stopped_in < 1.0
    assert done["message"]["finish_reason"] == "cancelled" and done["message"]["content"]
    wait_until(lambda: open_sessions(embedded_gateway.urls) == [0, 0, 0], 2.0, "the nodes to close the session")
    answer = Message.objects.get(pk=done["message"]["id"])
    assert answer.finish_reason == "cancelled" and answer.content == done["message"]["content"]
    assert answer.completion_tokens > 0  # the gateway's usage report of the stopped answer was recorded and charged
    assert balance_of(owner) < 300_000


def test_it_cancels_the_generation_when_the_socket_drops(owner, smollm2, embedded_gateway, chat_socket):
    ws = chat_socket(owner)

    async def scenario():
        await ws.connect()
        await ws.send_json_to(
            {
                "type": "send",
                "content": "Write a long story about a dragon who learns to fly.",
                "settings": {"max_new_tokens": 400},
            }
        )
        await _until(ws, "token")
        await ws.disconnect()

    async_to_sync(scenario)()
    wait_until(lambda: open_sessions(embedded_gateway.urls) == [0, 0, 0], 5.0, "the nodes to close the session")


def test_it_drops_the_oldest_turns_with_a_note_when_the_context_is_full(
    owner, smollm2, embedded_gateway, chat_socket, settings
):
    settings.CHAT_CONTEXT_TOKENS = 120
    conversation = Conversation.objects.create(user=owner, model="smollm2", title="long")
    for i in range(3):
        conversation.messages.create(role="user", content=f"Tell me fact number {i} about the sea, in detail please.")
        conversation.messages.create(role="assistant", content="The sea is big and deep and full of fish. " * 2)

    ws = chat_socket(owner)

    async def scenario():
        await ws.connect()
        await ws.send_json_to(
            {"type": "send", "conversation": conversation.pk, "content": "And the sky?", "settings": GREEDY}
        )
        done, before = await _until(ws, "done")
        await ws.disconnect()
        return done, before

    done, before = async_to_sync(scenario)()
    started = next(m for m in before if m["type"] == "started")
    assert started["dropped_messages"] >= 2 and started["dropped_messages"] % 2 == 0  # whole turns
    assert started["prompt_tokens"] + GREEDY["max_new_tokens"] <= 120
    assert done["message"]["dropped_messages"] == started["dropped_messages"]
    assert conversation.messages.count() == 8  # nothing is deleted: only left out of the prompt


def test_it_counts_anonymous_answers_against_the_free_quota(smollm2, embedded_gateway, chat_socket, settings):
    from django.contrib.sessions.backends.db import SessionStore

    from portal.ledger.spending import anonymous_tokens_left

    settings.LEDGER_ANONYMOUS_QUOTA_TOKENS = 60
    session = SessionStore()
    session.create()
    ws = chat_socket(session_key=session.session_key)

    async def scenario():
        await ws.connect()
        await ws.send_json_to({"type": "send", "content": "Hi!", "settings": {"max_new_tokens": 500}})
        done, _ = await _until(ws, "done")
        await ws.send_json_to({"type": "send", "conversation": done["conversation"], "content": "More?"})
        refused = await ws.receive_json_from(timeout=15)
        await ws.disconnect()
        return done, refused

    done, refused = async_to_sync(scenario)()
    assert done["usage"]["total_tokens"] <= 60  # the answer was capped to what the quota pays for
    assert anonymous_tokens_left(session.session_key) == 60 - done["usage"]["total_tokens"]
    if anonymous_tokens_left(session.session_key) == 0:
        assert refused["code"] == "insufficient_credits"


def test_it_regenerates_the_last_answer_in_place(owner, smollm2, embedded_gateway, chat_socket):
    ws = chat_socket(owner)

    async def scenario():
        await ws.connect()
        await ws.send_json_to({"type": "send", "content": "Name a colour.", "settings": GREEDY})
        first, _ = await _until(ws, "done")
        await ws.send_json_to({"type": "regenerate", "conversation": first["conversation"], "settings": GREEDY})
        accepted = await ws.receive_json_from(timeout=15)
        again, _ = await _until(ws, "done")
        await ws.disconnect()
        return first, accepted, again

    first, accepted, again = async_to_sync(scenario)()
    assert accepted["question"] is None and again["conversation"] == first["conversation"]
    assert again["message"]["content"] == first["message"]["content"]  # greedy: the same answer
    roles = list(Message.objects.filter(conversation_id=first["conversation"]).values_list("role", "id"))
    assert [r for r, _ in roles] == ["user", "assistant"] and roles[1][1] == again["message"]["id"]
