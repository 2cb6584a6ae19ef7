"""The chat page with several catalogued models (#20 item 5): its selector offers the chat-capable ones, and
the websocket refuses a conversation with a model that has no chat template (a completion model) or is an
embedding model, storing nothing. (Chatting with the chosen model through real nodes: tests/portal/
test_portal_heterogeneous.py.)"""

from __future__ import annotations

import json
import re

import pytest
from asgiref.sync import async_to_sync

from portal.chat.models import Conversation
from portal.swarm.models import SwarmModel

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def catalogue(smollm2) -> None:
    SwarmModel.objects.create(name="tiny-chat", num_blocks=4, hidden_size=32, architecture="qwen2", kind="chat")
    SwarmModel.objects.create(name="gemma3-270m", num_blocks=18, hidden_size=640, kind="completion")
    SwarmModel.objects.create(name="minilm", num_blocks=6, hidden_size=384, kind="embedding")


def test_the_selector_offers_the_chat_capable_models(catalogue, owner_client):
    page = owner_client.get("/chat/").content.decode()
    state = json.loads(re.search(r'<script id="chat-state" type="application/json">(.*?)</script>', page).group(1))
    assert [m["name"] for m in state["models"]] == ["smollm2", "tiny-chat"]


@pytest.mark.parametrize(("model", "code"), [("gemma3-270m", "model_not_chat"), ("minilm", "model_not_generative")])
def test_the_socket_refuses_a_conversation_the_model_cannot_have(catalogue, owner, chat_socket, settings, model, code):
    settings.CHAT_GATEWAY_EMBEDDED = False  # refused before a gateway is asked

    ws = chat_socket(owner)

    async def scenario():
        assert (await ws.connect())[0]
        await ws.send_json_to({"type": "send", "content": "hi", "model": model})
        reply = await ws.receive_json_from(timeout=15)
        await ws.disconnect()
        return reply

    reply = async_to_sync(scenario)()
    assert reply["type"] == "error" and reply["code"] == code and model in reply["message"]
    assert not Conversation.objects.exists()
