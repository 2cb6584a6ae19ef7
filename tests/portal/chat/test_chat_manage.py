"""Managing conversations: rename, delete, export (Markdown, JSON) and the system prompt; only the owner may.

A stranger (another user, another anonymous browser, or nobody) gets the same 404 as for a conversation
that does not exist, and changes nothing.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client

from portal.chat import conversations
from portal.chat.conversations import InvalidValue, NotFound, Owner
from portal.chat.models import Conversation

pytestmark = pytest.mark.django_db


@pytest.fixture
def mine(owner):
    c = Conversation.objects.create(user=owner, model="smollm2", title="capitals", system_prompt="Answer tersely.")
    c.messages.create(role="user", content="What is the capital of France?")
    c.messages.create(role="assistant", content="Paris.\n\n```python\nprint('Paris')\n```", finish_reason="stop")
    return c


def _client(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def test_it_renames_deletes_and_exports_for_the_owner(owner, mine):
    client = _client(owner)
    response = client.post(f"/chat/{mine.pk}/rename/", {"title": "  French   capitals "})
    assert response.status_code == 302 and response["Location"] == f"/chat/{mine.pk}/"
    mine.refresh_from_db()
    assert mine.title == "French capitals"

    md = client.get(f"/chat/{mine.pk}/export.md")
    assert md.status_code == 200 and md["Content-Type"].startswith("text/markdown")
    assert md["Content-Disposition"] == f'attachment; filename="conversation-{mine.pk}.md"'
    text = md.content.decode()
    assert text.startswith("# French capitals\n")
    assert "## System prompt\n\nAnswer tersely." in text
    assert "## You\n\nWhat is the capital of France?" in text
    assert "## Assistant\n\nParis.\n\n```python\nprint('Paris')\n```" in text

    data = json.loads(client.get(f"/chat/{mine.pk}/export.json").content)
    assert data["title"] == "French capitals" and data["system_prompt"] == "Answer tersely."
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris.\n\n```python\nprint('Paris')\n```"),
    ]

    response = client.post(f"/chat/{mine.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/chat/"
    assert not Conversation.objects.filter(pk=mine.pk).exists()
    assert client.get(f"/chat/{mine.pk}/export.json").status_code == 404


@pytest.mark.parametrize("who", ["other user", "anonymous browser"])
def test_a_stranger_cannot_read_rename_delete_or_export_it(owner, other, mine, who):
    client = _client(other if who == "other user" else None)
    if who == "anonymous browser":
        client.get("/chat/")  # a session of its own
    assert client.get(f"/chat/{mine.pk}/").status_code == 404
    assert client.get(f"/chat/{mine.pk}/export.md").status_code == 404
    assert client.get(f"/chat/{mine.pk}/export.json").status_code == 404
    assert client.post(f"/chat/{mine.pk}/rename/", {"title": "pwned"}).status_code == 404
    assert client.post(f"/chat/{mine.pk}/delete/").status_code == 404
    mine.refresh_from_db()
    assert mine.title == "capitals" and mine.messages.count() == 2
    # The same answer as for a conversation that does not exist.
    assert client.get("/chat/999999/export.md").status_code == 404


def test_an_anonymous_owner_manages_their_own_conversation():
    client = _client()
    client.get("/chat/")
    key = client.session.session_key
    c = Conversation.objects.create(session_key=key, model="smollm2", title="anon")
    assert client.post(f"/chat/{c.pk}/rename/", {"title": "mine"}).status_code == 302
    assert json.loads(client.get(f"/chat/{c.pk}/export.json").content)["title"] == "mine"
    assert client.post(f"/chat/{c.pk}/delete/").status_code == 302
    assert not Conversation.objects.filter(pk=c.pk).exists()


def test_rename_and_delete_refuse_get_and_odd_exports(owner, mine):
    client = _client(owner)
    assert client.get(f"/chat/{mine.pk}/delete/").status_code == 405
    assert client.get(f"/chat/{mine.pk}/rename/").status_code == 405
    assert client.get(f"/chat/{mine.pk}/export.html").status_code == 404
    assert Conversation.objects.filter(pk=mine.pk).exists()


def test_a_long_title_is_cut_to_fit(owner, mine):
    conversations.rename(Owner.of(owner, None), mine.pk, "word " * 100)
    mine.refresh_from_db()
    assert len(mine.title) <= 120 and mine.title.endswith("…")
    with pytest.raises(InvalidValue):
        conversations.rename(Owner.of(owner, None), mine.pk, ["not", "text"])
    with pytest.raises(NotFound):
        conversations.rename(Owner.of(owner, None), "1 OR 1=1", "x")


def test_the_system_prompt_is_the_first_message_the_model_sees(owner, mine):
    messages, dropped = conversations.history(mine, max_messages=10, max_chars=10_000)
    assert messages[0] == {"role": "system", "content": "Answer tersely."}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] and dropped == 0

    # Changed with the next question; "" clears it.
    _, _ = conversations.add_question(Owner.of(owner, None), mine.pk, "smollm2", "And Italy?", "")
    mine.refresh_from_db()
    messages, _ = conversations.history(mine, max_messages=10, max_chars=10_000)
    assert mine.system_prompt == "" and messages[0]["role"] == "user"

    # Only the newest messages fit: the system prompt still leads, and is not counted as dropped.
    _, _ = conversations.add_question(Owner.of(owner, None), mine.pk, "smollm2", "And Spain?", "Be brief.")
    mine.refresh_from_db()
    messages, dropped = conversations.history(mine, max_messages=1, max_chars=10_000)
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "And Spain?"}]
    assert dropped == 3


def test_the_chat_libraries_are_served_and_nothing_else_under_node_modules(client):
    for name, kind in [("marked.js", "text/javascript"), ("purify.js", "text/javascript"),
                       ("highlight.js", "text/javascript"), ("highlight.css", "text/css")]:  # fmt: skip
        response = client.get(f"/chat/lib/{name}")
        assert response.status_code == 200 and response["Content-Type"] == kind
        assert b"".join(response.streaming_content)
    for name in ["../package.json", "..%2Fpackage.json", "marked", "onnxruntime-web/dist/ort.mjs", "purify.js.map"]:
        assert client.get(f"/chat/lib/{name}").status_code == 404


def test_a_missing_library_is_a_system_check_warning(monkeypatch):
    from portal.chat import checks, libraries

    assert checks.check_chat_libraries(None) == []
    monkeypatch.setitem(libraries.LIBRARIES, "marked.js", ("marked/lib/gone.js", "text/javascript"))
    (warning,) = checks.check_chat_libraries(None)
    assert warning.id == "chat.W001" and "marked/lib/gone.js" in warning.msg
