"""``POST /v1/embeddings``: vectors from an encoder-only model of the swarm (OpenAI's shape and errors).

``input`` is a string or a list of strings, ``encoding_format`` ``float`` (default) or ``base64`` (what the
official ``openai`` package asks for), ``dimensions`` only as the model's own. ``usage`` counts the input
tokens, which are what the request is charged (like every ``/v1`` call: credits for a signed-in key). Errors
as the rest of ``/v1``: 400 bad input (a decoder model's name, token ids, too many or too long inputs),
401 bad key, 402 out of credits, 404 unknown model, 413 body too large, 429 too many requests at once,
503 the swarm does not cover the model or failed. The work is in :mod:`portal.generation.embeddings`.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import JsonResponse

from portal.api.openai import ApiError, json_body, openai_view
from portal.generation import OutOfCredits, Requester, TooManyGenerations
from portal.generation import embeddings as domain
from portal.generation.pool import SwarmUnavailable
from portal.generation.protocol import BadRequest


@openai_view(("POST",))
async def embeddings(request):
    """``POST /v1/embeddings``: one embedding per input, through the swarm's encoder nodes."""
    try:
        req = domain.EmbeddingRequest.parse(json_body(request))
        await sync_to_async(domain.check_model)(req)
        pool = domain.shared_embedding_pool()
        client = await sync_to_async(domain.count, thread_sensitive=False)(req, pool)
        await sync_to_async(domain.prepare)(Requester(request.api_user.pk), request.META.get("REMOTE_ADDR", ""), req)
    except (BadRequest, TooManyGenerations) as exc:
        raise ApiError(exc.status, str(exc), exc.code, exc.param) from None
    except OutOfCredits as exc:
        raise ApiError(402, str(exc), "insufficient_quota") from None
    except SwarmUnavailable as exc:
        raise ApiError(503, str(exc), "swarm_unavailable", "model") from None
    ok = False
    try:
        vectors = await sync_to_async(domain.compute, thread_sensitive=False)(req, client)
        ok = True
    except BadRequest as exc:
        raise ApiError(exc.status, str(exc), exc.code, exc.param) from None
    except SwarmUnavailable as exc:
        raise ApiError(503, str(exc), "swarm_unavailable") from None
    finally:
        await sync_to_async(domain.finish)(req, ok)  # charged only for vectors the client gets
    return JsonResponse(domain.response(req, vectors))


_INPUT = {
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": domain.MAX_INPUTS},
    ],
    "description": f"the text(s) to embed: at most {domain.MAX_INPUTS} strings, each within the model's tokens "
    "(all-MiniLM-L6-v2: 256), all within the per-request limit; token ids are refused",
}
_EMBEDDING = {
    "type": "object",
    "required": ["object", "index", "embedding"],
    "properties": {
        "object": {"type": "string", "enum": ["embedding"]},
        "index": {"type": "integer", "minimum": 0},
        "embedding": {
            "oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string", "format": "byte"}],
            "description": "floats, or with encoding_format=base64 the little-endian float32 bytes in base64",
        },
    },
}


def schema_operation(errors: dict) -> dict:
    """``POST /v1/embeddings`` for the portal's OpenAPI schema (``errors``: the shared error responses)."""
    body = {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "description": "an embedding model (GET /v1/models: kind embedding)"},
            "input": _INPUT,
            "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
            "dimensions": {"type": "integer", "minimum": 1, "description": "only the model's own (MiniLM: 384)"},
            "user": {"type": "string"},
        },
    }
    ok = {
        "type": "object",
        "required": ["object", "data", "model", "usage"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _EMBEDDING},
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
            },
        },
    }
    return {
        "post": {
            "operationId": "openai_embeddings_create",
            "summary": "Embed text with an encoder model of the swarm (input tokens are charged)",
            "tags": ["openai"],
            "security": [{"apiKey": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": {"description": "one embedding per input", "content": {"application/json": {"schema": ok}}},
                **errors,
            },
        }
    }
