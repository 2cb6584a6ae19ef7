"""A heterogeneous catalogue through the APIs (#20 item 5): every catalogued model is listed with its kind, and a
request a model cannot answer is a clear 400 before anything is held or sent to a gateway: a conversation for a
model without a chat template, text from an embedding model."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from portal.chat.models import Reservation
from portal.swarm.models import SwarmModel

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def catalogue(smollm2) -> dict[str, SwarmModel]:
    """The default chat model, a completion model (no chat template) and an embedding model."""
    gemma = SwarmModel.objects.create(
        name="gemma3-270m", num_blocks=18, hidden_size=640, architecture="gemma3_text", kind="completion"
    )
    minilm = SwarmModel.objects.create(name="minilm", num_blocks=6, hidden_size=384, architecture="bert",
                                       kind="embedding")  # fmt: skip
    return {"smollm2": smollm2, "gemma3-270m": gemma, "minilm": minilm}


@pytest.fixture
def api(owner_api_key) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {owner_api_key}")


def _post(client: Client, path: str, body: dict):
    return client.post(path, json.dumps(body), content_type="application/json")


def test_it_lists_every_catalogued_model_with_its_kind(catalogue, api, anon_client):
    kinds = {"smollm2": "chat", "gemma3-270m": "completion", "minilm": "embedding"}
    listed = {m["name"]: (m["kind"], m["chat"], m["architecture"]) for m in anon_client.get("/api/v1/models/").json()}
    assert listed == {
        "smollm2": ("chat", True, "llama"),
        "gemma3-270m": ("completion", False, "gemma3_text"),
        "minilm": ("embedding", False, "bert"),
    }
    assert {m["id"]: m["kind"] for m in api.get("/v1/models").json()["data"]} == kinds
    assert api.get("/v1/models/gemma3-270m").json()["kind"] == "completion"
    health = anon_client.get("/api/v1/swarm/health/").json()["models"]
    assert {m["model"]: m["kind"] for m in health} == kinds
    assert "source" not in anon_client.get("/api/v1/models/").json()[0]  # where weights lie on the portal: not public


@pytest.mark.parametrize(
    ("path", "body", "code", "text"),
    [
        ("/v1/chat/completions", {"model": "gemma3-270m", "messages": QUESTION}, "model_not_chat",
         "gemma3-270m has no chat template"),
        ("/v1/chat/completions", {"model": "minilm", "messages": QUESTION}, "model_not_generative",
         "minilm is an embedding model"),
        ("/v1/completions", {"model": "minilm", "prompt": "Paris is"}, "model_not_generative",
         "use /v1/embeddings"),
    ],
)  # fmt: skip
def test_it_refuses_what_a_model_cannot_answer_with_a_clear_400(catalogue, api, path, body, code, text):
    response = _post(api, path, {**body, "max_tokens": 5})
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == code and error["param"] == "model"
    assert text in error["message"] and error["type"] == "invalid_request_error"
    assert not Reservation.objects.exists()  # refused before any credits were held
