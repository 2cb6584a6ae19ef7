"""API error handling: an overloaded database is a 503 with Retry-After, not a 500."""

from __future__ import annotations

import logging

from django.db import OperationalError
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
    return exception_handler(exc, context)
