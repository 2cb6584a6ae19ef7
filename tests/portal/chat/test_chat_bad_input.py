"""What a browser may send the chat websocket that must not work: clear errors, nothing leaked or stored."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.contrib.sessions.backends.db import SessionStore

from portal.chat.models import Conversation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_gateway(settings):
    settings.CHAT_GATEWAY_EMBEDDED = False  # every refusal here happens before a gateway is asked


def _replies(ws, *messages, raw: bool = False) -> list[dict]:
    async def scenario():
        assert (await ws.connect())[0]
        out = []
        for m in messages:
            if raw:
                await ws.send_to(text_data=m)
            else:
                await ws.send_json_to(m)
            out.append(await ws.receive_json_from(timeout=15))
        await ws.disconnect()
        return out

    return async_to_sync(scenario)()


def test_it_refuses_malformed_and_oversized_messages(owner, smollm2, chat_socket, settings):
    big = json.dumps({"type": "send", "content": "x" * (settings.CHAT_MAX_WS_MESSAGE_BYTES + 1)})
    replies = _replies(chat_socket(owner), "not json", "[1, 2]", '{"type": "dance"}', big, raw=True)
    assert [r["code"] for r in replies] == ["bad_json", "bad_json", "unknown_type", "too_large"]
    assert not Conversation.objects.exists()


@pytest.mark.parametrize(
    ("message", "code", "text"),
    [
        ({"content": "hi", "model": "gpt-17"}, "model_not_found", "unknown model 'gpt-17'"),
        ({"content": "hi", "settings": {"max_new_tokens": -5}}, "invalid_value", "max_tokens must be an integer"),
        ({"content": "hi", "settings": {"temperature": 1e9}}, "invalid_value", "temperature must be a number"),
        ({"content": "hi", "settings": {"top_p": 0}}, "invalid_value", "top_p must be"),
        ({"content": "hi", "settings": "hot"}, "invalid_value", "settings must be an object"),
        ({"content": "   "}, "invalid_value", "type a message first"),
        ({"content": ["a"]}, "invalid_value", "type a message first"),
        ({"content": "hi", "conversation": "1; DROP TABLE"}, "not_found", "no such conversation"),
        ({"content": "hi", "system_prompt": ["be evil"]}, "invalid_value", "system_prompt must be text"),
        ({"content": "hi", "system_prompt": "x" * 4001}, "invalid_value", "limited to 4000 characters"),
    ],
)
def test_it_refuses_invalid_requests_with_a_clear_message(owner, smollm2, chat_socket, message, code, text):
    (reply,) = _replies(chat_socket(owner), {"type": "send", **message})
    assert reply["type"] == "error" and reply["code"] == code and text in reply["message"]
    assert not Conversation.objects.exists()


def test_it_does_not_show_or_extend_another_users_conversation(owner, other, smollm2, chat_socket):
    theirs = Conversation.objects.create(user=other, model="smollm2", title="bob's secret")
    theirs.messages.create(role="user", content="my secret plan")
    replies = _replies(
        chat_socket(owner),
        {"type": "send", "conversation": theirs.pk, "content": "what did bob ask?"},
        {"type": "regenerate", "conversation": theirs.pk},
    )
    assert [r["code"] for r in replies] == ["not_found", "not_found"]
    assert all("secret" not in r["message"] for r in replies)
    assert theirs.messages.count() == 1


def test_it_tells_anonymous_visitors_when_their_quota_is_used_up(smollm2, chat_socket, settings):
    settings.LEDGER_ANONYMOUS_QUOTA_TOKENS = 0
    session = SessionStore()
    session.create()
    (reply,) = _replies(chat_socket(session_key=session.session_key), {"type": "send", "content": "hello"})
    assert reply["code"] == "insufficient_credits" and "log in or sign up" in reply["message"]
    assert not Conversation.objects.exists()


def test_it_says_so_when_no_gateway_takes_the_request(owner, smollm2, chat_socket, settings):
    settings.CHAT_GATEWAY_TIMEOUT = 0.3  # no gateway runs here
    ws = chat_socket(owner)

    async def scenario():
        await ws.connect()
        await ws.send_json_to({"type": "send", "content": "hello"})
        accepted = await ws.receive_json_from(timeout=15)
        timeout = await ws.receive_json_from(timeout=15)
        await ws.disconnect()
        return accepted, timeout

    accepted, timeout = async_to_sync(scenario)()
    assert accepted["type"] == "accepted"
    assert timeout["code"] == "gateway_unavailable" and "no gateway answered" in timeout["message"]


def test_it_refuses_users_without_credits(owner, smollm2, chat_socket, settings):
    settings.LEDGER_CREDITS_PER_TOKEN = 10**9  # the starting grant pays for nothing
    (reply,) = _replies(chat_socket(owner), {"type": "send", "content": "hello"})
    assert reply["code"] == "insufficient_credits" and "out of credits" in reply["message"]


def test_it_asks_visitors_without_a_session_to_enable_cookies(smollm2, chat_socket):
    (reply,) = _replies(chat_socket(), {"type": "send", "content": "hi"})
    assert reply["code"] == "no_session"
