"""``/v1/embeddings`` without a swarm: the refusals that come before any node work (nothing held, nothing
charged), a 503 when no node serves the model, and the OpenAPI schema. (Embeddings through real MiniLM nodes
with the official ``openai`` package: ``test_openai_embeddings.py``.)"""

from __future__ import annotations

import json

import pytest
from django.test import Client

from portal.chat.models import Reservation
from portal.swarm.models import SwarmModel


@pytest.fixture
def api(owner_api_key, smollm2) -> Client:
    SwarmModel.objects.create(name="minilm", num_blocks=6, hidden_size=384, architecture="bert", kind="embedding")
    return Client(HTTP_AUTHORIZATION=f"Bearer {owner_api_key}")


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"input": "hi"}, "invalid_value", "model"),
        ({"model": "minilm"}, "invalid_value", "input"),
        ({"model": "minilm", "input": []}, "invalid_value", "input"),
        ({"model": "minilm", "input": ["ok", ""]}, "invalid_value", "input"),
        ({"model": "minilm", "input": ["ok", {"text": "x"}]}, "invalid_value", "input"),
        ({"model": "minilm", "input": ["x"] * 257}, "invalid_value", "input"),
        ({"model": "minilm", "input": [1, 2, 3]}, "unsupported_parameter", "input"),
        ({"model": "minilm", "input": [[1, 2], [3]]}, "unsupported_parameter", "input"),
        ({"model": "minilm", "input": "hi", "encoding_format": "int8"}, "invalid_value", "encoding_format"),
        ({"model": "minilm", "input": "hi", "dimensions": 0}, "invalid_value", "dimensions"),
        ({"model": "minilm", "input": "hi", "dimensions": True}, "invalid_value", "dimensions"),
        ({"model": "smollm2", "input": "hi"}, "model_not_embedding", "model"),  # a decoder generates text
    ],
)
def test_bad_requests_are_400s_before_anything_is_held(api, body, code, param):
    error = _error(api.post("/v1/embeddings", json.dumps(body), content_type="application/json"), 400)
    assert (error["code"], error["param"]) == (code, param)
    assert error["type"] == "invalid_request_error"
    assert not Reservation.objects.exists()


def test_an_unknown_model_is_a_404_and_bodies_that_are_no_json_objects_are_400s(api):
    post = lambda data: api.post("/v1/embeddings", data, content_type="application/json")  # noqa: E731
    assert _error(post(json.dumps({"model": "nope", "input": "hi"})), 404)["code"] == "model_not_found"
    for data in ("[1, 2]", "not json", '{"model": "minilm", "input": NaN}'):
        assert _error(post(data), 400)["code"] == "invalid_json"


@pytest.mark.django_db(transaction=True)  # the pool asks the tracker from a worker thread (its own connection)
def test_no_node_serving_the_model_is_a_503_and_nothing_is_charged(api):
    error = _error(api.post("/v1/embeddings", json.dumps({"model": "minilm", "input": "hi"}), "application/json"), 503)
    assert error["code"] == "swarm_unavailable"
    assert not Reservation.objects.exists()


def test_no_key_is_a_401(db):
    assert _error(Client().post("/v1/embeddings", "{}", content_type="application/json"), 401)["code"] == (
        "invalid_api_key"
    )


def test_the_openapi_schema_documents_it(db):
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    body = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model", "input"]
    assert body["properties"]["encoding_format"]["enum"] == ["float", "base64"]
