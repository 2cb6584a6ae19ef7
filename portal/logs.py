"""Request ids in the portal's log lines (``LOG_FORMAT=json`` makes them a field of every event).

:class:`RequestIdMiddleware` gives each HTTP request a fresh id, returns it in the ``X-Request-ID`` response
header (so a user's bug report can name it) and keeps it in a context variable while the request runs;
:class:`RequestIdFilter` copies it onto every log record made meanwhile. A client's own ``X-Request-ID`` is
ignored: ids in our logs are ours, never text a visitor chose.
"""

from __future__ import annotations

import logging
import uuid
from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("layerswarm_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the HTTP request being served in this context, if any."""
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records that lack one (``None`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            # django.request's records (4xx/5xx, logged after the middleware returned) carry the request itself.
            record.request_id = getattr(getattr(record, "request", None), "request_id", None) or _request_id.get()
        if hasattr(record, "request"):  # its repr is no use in a log line; the id names it
            record.request = None
        return True


class RequestIdMiddleware:
    """Names each request (``X-Request-ID``) and its log events."""

    sync_capable, async_capable = True, False

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        request_id = uuid.uuid4().hex
        request.request_id = request_id
        token = _request_id.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            _request_id.reset(token)
        response["X-Request-ID"] = request_id
        return response
