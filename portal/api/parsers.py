"""A JSON parser with a hard size limit and strict JSON (no NaN/Infinity, an object at the top)."""

from __future__ import annotations

import json

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser


class PayloadTooLarge(APIException):
    """The request body is over ``API_MAX_JSON_BYTES``."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


class LimitedJSONParser(JSONParser):
    """Reads at most ``API_MAX_JSON_BYTES`` bytes; a bigger body is a 413 before any parsing."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.API_MAX_JSON_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        except RecursionError:  # thousands of nested brackets fit under the size limit: a 400, not a 500
            raise ParseError("JSON parse error - nested too deeply") from None
        if not isinstance(body, dict):  # every endpoint takes an object; views may rely on request.data.get
            raise ParseError(f"the body must be a JSON object, not {type(body).__name__}")
        return body
