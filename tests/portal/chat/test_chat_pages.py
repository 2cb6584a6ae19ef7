"""The chat page: your conversations only, kept across reloads; anonymous visitors get a session."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from portal.chat.models import Conversation

pytestmark = pytest.mark.django_db


def _state(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="chat-state" type="application/json">') + len(
        '<script id="chat-state" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


def test_it_shows_your_conversation_and_list_but_not_others(owner, other, smollm2):
    mine = Conversation.objects.create(user=owner, model="smollm2", title="capitals")
    mine.messages.create(role="user", content="What is the capital of France?")
    mine.messages.create(role="assistant", content="Paris.", finish_reason="stop", completion_tokens=3)
    Conversation.objects.create(user=other, model="smollm2", title="bob's plans")
    client = Client()
    client.force_login(owner)

    page = client.get(f"/chat/{mine.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "capitals" in html and "bob&#x27;s plans" not in html and "bob's plans" not in html
    state = _state(page)
    assert [(m["role"], m["content"]) for m in state["messages"]] == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris."),
    ]
    assert state["conversation"]["id"] == mine.pk and state["anonymous"] is False
    assert state["models"][0]["name"] == "smollm2"
    assert 'href="/chat/"' in html  # the nav link

    theirs = Conversation.objects.get(user=other)
    assert client.get(f"/chat/{theirs.pk}/").status_code == 404


def test_it_embeds_model_output_as_data_not_markup(owner, smollm2):
    evil = Conversation.objects.create(user=owner, model="smollm2", title="<b>x</b>")
    evil.messages.create(role="assistant", content="</script><script>alert(1)</script><img src=x onerror=alert(2)>")
    client = Client()
    client.force_login(owner)
    html = client.get(f"/chat/{evil.pk}/").content.decode()
    assert "<script>alert(1)" not in html and "<img src=x" not in html and "<b>x</b>" not in html
    assert "onerror=alert(2)" in _state(client.get(f"/chat/{evil.pk}/"))["messages"][0]["content"]


def test_it_gives_anonymous_visitors_a_session_and_their_quota(smollm2):
    client = Client()
    page = client.get("/chat/")
    assert page.status_code == 200 and client.cookies.get("sessionid")
    state = _state(page)
    assert state["anonymous"] is True and state["tokens_left"] > 0 and state["messages"] == []
