"""OpenAI conformance of ``/v1`` that needs no swarm: refusals of what the server does not do, attacks on the
body and parameters, ``GET /v1/models/{id}``, CORS for browser clients, the OpenAPI schema. (Generation itself,
with the official ``openai`` package and LangChain, is in ``test_openai_api.py`` against real nodes.)"""

from __future__ import annotations

import json

import pytest
from django.test import Client

from portal.api.openai import body_limit

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def api(owner_api_key, smollm2) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {owner_api_key}")


def _post(client: Client, path: str, body, **extra):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(path, data, content_type="application/json", **extra)


def _error(response) -> dict:
    assert response["Content-Type"] == "application/json", response.content[:200]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]),
        ("tool_choice", "required"),
        ("functions", [{"name": "f", "parameters": {}}]),
        ("function_call", {"name": "f"}),
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
        ("n", 2),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("logit_bias", {"50256": -100}),
        ("reasoning_effort", "high"),
    ],
)
def test_it_refuses_fields_it_does_not_implement_naming_them(api, field, value):
    response = _post(api, "/v1/chat/completions", {"model": "smollm2", "messages": QUESTION, field: value})
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == field and field in error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("field", "value"), [("echo", True), ("best_of", 3), ("suffix", "!"), ("logprobs", 6)])
def test_it_refuses_text_completion_fields_it_does_not_implement(api, field, value):
    response = _post(api, "/v1/completions", {"model": "smollm2", "prompt": "Hello", field: value})
    assert response.status_code == 400 and _error(response)["param"] == field


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"top_logprobs": 10**9, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": -1, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": "all", "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 5}, "top_logprobs"),  # without logprobs=true, as OpenAI
        ({"logprobs": "yes"}, "logprobs"),
        ({"logprobs": 1}, "logprobs"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 10**12}, "max_tokens"),
        ({"max_completion_tokens": None, "max_tokens": -5}, "max_tokens"),  # a null does not hide the other
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_tokens": 3.5}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": [1]}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"stop": 5}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages"),
        ({"model": ["smollm2"]}, "model"),
        ({"n": True}, "n"),
    ],
)
def test_it_answers_wrong_types_and_absurd_values_with_a_clear_400(api, change, param):
    response = _post(api, "/v1/chat/completions", {"model": "smollm2", "messages": QUESTION, **change})
    assert response.status_code == 400
    assert _error(response)["param"] == param
    assert api.get("/v1/models").status_code == 200  # and the portal carries on


def test_it_refuses_an_oversized_body_with_413_and_sizes_the_limit_to_the_context(api, settings):
    settings.CHAT_CONTEXT_TOKENS = 1024
    limit = body_limit()
    assert limit == max(settings.API_MAX_JSON_BYTES, 1024 * settings.OPENAI_BYTES_PER_TOKEN)
    settings.CHAT_CONTEXT_TOKENS = 4096
    assert body_limit() == 4 * limit  # sized to the context, not a fixed 16 KiB
    assert body_limit() > 16 * 1024
    huge = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "x" * (body_limit() + 1)}]})
    response = _post(api, "/v1/chat/completions", huge)
    assert response.status_code == 413 and _error(response)["code"] == "payload_too_large"
    # A lying Content-Length is refused before the body is read.
    response = _post(api, "/v1/chat/completions", b"{}", CONTENT_LENGTH=str(10**12))
    assert response.status_code == 413
    # A body just under the limit is read (and refused for what it says, not for its size).
    fits = {"model": "smollm2", "messages": QUESTION, "tools": [{"type": "function", "pad": "y" * 40_000}]}
    assert len(json.dumps(fits)) < body_limit()
    assert _post(api, "/v1/chat/completions", fits).status_code == 400


@pytest.mark.parametrize("body", [b"[1, 2]", b"NaN", b'{"model": Infinity}', b"\xff\xfe", b"{" * 10_000, b""])
def test_it_refuses_bodies_that_are_not_one_json_object(api, body):
    response = _post(api, "/v1/chat/completions", body)
    assert response.status_code == 400 and _error(response)["code"] == "invalid_json"


def test_it_gets_one_model_by_id(api):
    response = api.get("/v1/models/smollm2")
    assert response.status_code == 200
    assert response.json() == {"id": "smollm2", "object": "model", "created": 0, "owned_by": "layerswarm",
                               "covered": False, "kind": "chat"}  # fmt: skip
    missing = api.get("/v1/models/gpt-17")
    assert missing.status_code == 404 and _error(missing)["code"] == "model_not_found"
    assert Client().get("/v1/models/smollm2").status_code == 401  # the key is still required


def test_it_allows_browser_clients_only_from_the_configured_origins(api, settings):
    preflight = {"HTTP_ORIGIN": "https://app.example", "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST",
                 "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "authorization, content-type, x-stainless-os"}  # fmt: skip
    settings.OPENAI_CORS_ALLOWED_ORIGINS = []  # the default: none
    closed = Client().options("/v1/chat/completions", **preflight)
    assert closed.status_code == 204 and "Access-Control-Allow-Origin" not in closed
    assert "Access-Control-Allow-Origin" not in api.get("/v1/models", HTTP_ORIGIN="https://app.example")

    settings.OPENAI_CORS_ALLOWED_ORIGINS = ["https://app.example"]
    opened = Client().options("/v1/chat/completions", **preflight)  # no key: preflights carry none
    assert opened.status_code == 204 and opened["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in opened["Access-Control-Allow-Methods"]
    assert "x-stainless-os" in opened["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in opened  # bearer keys only, never cookies
    listed = api.get("/v1/models", HTTP_ORIGIN="https://app.example")
    assert listed.status_code == 200 and listed["Access-Control-Allow-Origin"] == "https://app.example"
    refused = _post(api, "/v1/chat/completions", {"model": "smollm2", "tools": [1]}, HTTP_ORIGIN="https://app.example")
    assert refused.status_code == 400 and refused["Access-Control-Allow-Origin"] == "https://app.example"
    other = Client().options("/v1/models", HTTP_ORIGIN="https://evil.example")
    assert "Access-Control-Allow-Origin" not in other and other["Vary"] == "Origin"

    settings.OPENAI_CORS_ALLOWED_ORIGINS = ["*"]
    anyone = Client().options("/v1/models/smollm2", HTTP_ORIGIN="https://evil.example",
                              HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,\r\nSet-Cookie: x=1")  # fmt: skip
    assert anyone["Access-Control-Allow-Origin"] == "*"
    assert anyone["Access-Control-Allow-Headers"] == "authorization, Set-Cookie, x, 1"  # names only, no new lines


def test_the_openapi_schema_documents_every_v1_operation(db):
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    paths = schema["paths"]
    assert {"/v1/models", "/v1/models/{model_id}", "/v1/chat/completions", "/v1/completions"} <= set(paths)
    chat = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"logprobs", "top_logprobs", "max_completion_tokens"} <= set(chat["properties"])
    assert "tools" in chat["description"]  # the refused fields are documented
    text = paths["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert text["properties"]["logprobs"]["maximum"] == 5
    choice = schema["components"]["schemas"]["OpenAICompletion"]["properties"]["choices"]["items"]
    assert "logprobs" in choice["properties"]
