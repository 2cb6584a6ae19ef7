"""API error handling: an overloaded database is a 503 with Retry-After, not a 500."""

from __future__ import annotations

import logging

from django.db import OperationalError
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler

log = logging.getLogger("portal.api")

RETRY_AFTER_S = 5


def api_exception_handler(exc, context):
    """DRF's handler, plus: database unavailable or its connection pool exhausted -> 503 + Retry-After.

    Nodes treat any refusal as "retry later with backoff", so shedding load this way lets an overloaded
    portal recover instead of failing every request after a long wait.
    """
    if isinstance(exc, OperationalError):
        log.warning("database unavailable, answering 503: %s", exc)
        return Response(
            {"error": "overloaded", "detail": "the portal is overloaded; retry later"},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    response = exception_handler(exc, context)
    if response is not None and isinstance(exc, APIException):
        response.data = _uniform(exc, response.data)
    return response


def _uniform(exc: APIException, data):
    """Every API error carries ``error`` (a code) and ``detail`` (a sentence), as the schema documents.

    DRF's own errors lack one or the other (``{"detail": ...}``, or field errors ``{"name": [...]}``); field
    errors stay at the top level beside them, so clients reading a field's messages keep working.
    """
    if isinstance(data, dict) and isinstance(data.get("error"), str) and isinstance(data.get("detail"), str):
        return data
    if isinstance(exc, ValidationError):
        fields = data if isinstance(data, dict) else {"non_field_errors": data}
        summary = "; ".join(f"{name}: {_first(messages)}" for name, messages in fields.items())
        return {**fields, "error": "invalid", "detail": summary or "invalid request"}
    codes = exc.get_codes()
    code = codes.get("detail") if isinstance(codes, dict) else codes
    detail = data.get("detail") if isinstance(data, dict) else None
    return {**(data if isinstance(data, dict) else {}), "error": str(code or "error"), "detail": str(detail or exc)}


def _first(messages) -> str:
    while isinstance(messages, (list, tuple)) and messages:
        messages = messages[0]
    if isinstance(messages, dict):
        return "; ".join(f"{k}: {_first(v)}" for k, v in messages.items())
    return str(messages)


@csrf_exempt  # bearer-authenticated API: a POST to a wrong path gets the JSON 404, not a CSRF page
def not_found(request, *args, **kwargs) -> JsonResponse:
    """Unknown ``/api/...`` paths (and ids that are not numbers) get a JSON 404, never an HTML page."""
    return JsonResponse({"error": "not_found", "detail": f"no API endpoint at {request.path}"}, status=404)
