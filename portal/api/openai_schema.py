"""The OpenAI-compatible endpoints (``/v1/...``) in the portal's OpenAPI schema (``/api/schema/``).

Every ``/v1`` operation is here: ``GET /v1/models``, ``GET /v1/models/{model_id}``, ``POST /v1/chat/completions``,
``POST /v1/completions``. Fields OpenAI has and this server refuses (``tools``, ``response_format`` other than text,
``n`` > 1 ...) are listed in the descriptions, not as parameters.

``portal/api/openai.py`` serves them as plain async Django views (they stream server-sent events, which DRF does
not), so drf-spectacular cannot see them; this postprocessing hook writes their part of the schema by hand, so API
clients and the API fuzzing test (schemathesis) cover them like the DRF endpoints.
"""

from __future__ import annotations

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}
_USAGE = {
    "type": "object",
    "nullable": True,
    "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0},
    },
}
_STOP = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]}
_COMMON_PARAMS = {
    "model": {"type": "string", "minLength": 1, "description": "a model id from GET /v1/models"},
    "max_tokens": {
        "type": "integer",
        "nullable": True,
        "minimum": 1,
        "description": "default (null): the room the prompt leaves in the context, up to the server's "
        "per-answer cap (CHAT_MAX_NEW_TOKENS)",
    },
    "max_completion_tokens": {
        "type": "integer",
        "nullable": True,
        "minimum": 1,
        "description": "the same as max_tokens (wins over it)",
    },
    "temperature": {"type": "number", "nullable": True, "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "nullable": True, "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
    "seed": {"type": "integer", "nullable": True},
    "stop": _STOP,
    "n": {"type": "integer", "nullable": True, "enum": [1, None], "description": "only 1"},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "nullable": True, "properties": {"include_usage": {"type": "boolean"}}},
    "presence_penalty": {"type": "number", "nullable": True, "enum": [0, None]},
    "frequency_penalty": {"type": "number", "nullable": True, "enum": [0, None]},
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
                    },
                },
            ]
        },
    },
}
_CHAT_LOGPROBS = {
    "logprobs": {"type": "boolean", "nullable": True,
                 "description": "each answer token's log-probability (the model's, before temperature)"},
    "top_logprobs": {"type": "integer", "nullable": True, "minimum": 0, "maximum": 20,
                     "description": "alternatives per position (needs logprobs=true)"},
}  # fmt: skip
_TEXT_LOGPROBS = {
    "logprobs": {"type": "integer", "nullable": True, "minimum": 0, "maximum": 5,
                 "description": "log-probabilities with this many alternatives per position (null: none)"},
}  # fmt: skip
_TOKEN_LOGPROB = {
    "type": "object",
    "required": ["token", "logprob", "bytes"],
    "properties": {
        "token": {"type": "string"},
        "logprob": {"type": "number"},
        "bytes": {"type": "array", "nullable": True, "items": {"type": "integer", "minimum": 0, "maximum": 255}},
    },
}
_LOGPROBS = {
    "type": "object",
    "nullable": True,
    "description": "chat: content (one entry per token); text completions: tokens, token_logprobs, top_logprobs",
    "properties": {
        "content": {
            "type": "array",
            "nullable": True,
            "items": {
                **_TOKEN_LOGPROB,
                "properties": {
                    **_TOKEN_LOGPROB["properties"],
                    "top_logprobs": {"type": "array", "items": _TOKEN_LOGPROB},
                },
            },
        },
        "refusal": {"type": "array", "nullable": True, "items": _TOKEN_LOGPROB},
        "tokens": {"type": "array", "items": {"type": "string"}},
        "token_logprobs": {"type": "array", "items": {"type": "number"}},
        "top_logprobs": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "number"}}},
        "text_offset": {"type": "array", "items": {"type": "integer"}},
    },
}
_CHOICE_MESSAGE = {
    "type": "object",
    "required": ["index", "finish_reason"],
    "properties": {
        "index": {"type": "integer"},
        "finish_reason": {"type": "string", "nullable": True, "enum": ["stop", "length", None]},
        "message": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"type": "string", "enum": ["assistant"]},
                "content": {"type": "string"},
                "refusal": {"type": "string", "nullable": True},
            },
        },
        "text": {"type": "string"},
        "logprobs": _LOGPROBS,
    },
}
_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion", "text_completion"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": _CHOICE_MESSAGE},
        "usage": _USAGE,
    },
}
_MODEL = {
    "type": "object",
    "required": ["id", "object", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["model"]},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "covered": {"type": "boolean", "description": "every block has an online node now"},
    },
}
_MODELS = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/OpenAIModel"},
        },
    },
}


def _errors(*statuses: int) -> dict:
    reasons = {400: "bad parameters or context too long", 401: "missing, invalid or revoked API key",
               402: "out of credits", 404: "unknown model", 405: "wrong method", 413: "body too large",
               429: "too many requests or generations", 502: "the swarm failed the request",
               503: "the swarm does not cover the model, or no gateway answers"}  # fmt: skip
    return {
        str(s): {
            "description": reasons[s],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}},
        }
        for s in statuses
    }


def _completion_operation(summary: str, operation_id: str, prompt: dict, required: str, extra: dict) -> dict:
    body = {
        "type": "object",
        "required": ["model", required],
        "properties": {**_COMMON_PARAMS, **extra, required: prompt},
        "description": "Refused with a 400 naming the field: tools, tool_choice, functions, function_call, audio, "
        "prediction, web_search_options, logit_bias, reasoning_effort, suffix, response_format other than "
        "{type: text}, modalities other than [text], n > 1, echo, best_of > 1. Other unknown fields are ignored.",
    }
    ok = {
        "description": "the answer (a JSON object), or with stream=true server-sent events ending in `data: [DONE]`",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/OpenAICompletion"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["openai"],
            "security": [{"apiKey": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": ok, **_errors(400, 401, 402, 404, 413, 429, 502, 503)},
        }
    }


def add_openai_paths(result: dict, generator, request, public) -> dict:
    """drf-spectacular postprocessing hook: add ``/v1/models``, ``/v1/models/{model_id}``, ``/v1/chat/completions``
    and ``/v1/completions``."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.update({"OpenAIError": _ERROR, "OpenAICompletion": _COMPLETION, "OpenAIModelList": _MODELS,
                    "OpenAIModel": _MODEL})  # fmt: skip
    paths = result.setdefault("paths", {})
    paths["/v1/models"] = {
        "get": {
            "operationId": "openai_models_list",
            "summary": "The swarm's models",
            "tags": ["openai"],
            "security": [{"apiKey": []}],
            "responses": {
                "200": {
                    "description": "the models",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIModelList"}}},
                },
                **_errors(401, 429),
            },
        }
    }
    paths["/v1/models/{model_id}"] = {
        "get": {
            "operationId": "openai_models_retrieve",
            "summary": "One of the swarm's models",
            "tags": ["openai"],
            "security": [{"apiKey": []}],
            "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "the model",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIModel"}}},
                },
                **_errors(401, 404, 429),
            },
        }
    }
    paths["/v1/chat/completions"] = _completion_operation(
        "Answer a conversation with the model's chat template",
        "openai_chat_completions_create",
        {"type": "array", "items": _MESSAGE, "minItems": 1},
        "messages",
        _CHAT_LOGPROBS,
    )
    paths["/v1/completions"] = _completion_operation(
        "Continue a raw prompt",
        "openai_completions_create",
        {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]},
        "prompt",
        _TEXT_LOGPROBS,
    )
    from portal.api.embeddings import schema_operation  # its own module: the view and its schema side by side

    paths["/v1/embeddings"] = schema_operation(_errors(400, 401, 402, 404, 413, 429, 503))
    return result
