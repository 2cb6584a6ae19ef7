"""The swarm's trusted model publishers, served read-only at ``/api/v1/publishers/`` (issue #19).

A node started with ``--portal`` adds these keys to its trusted list: it accepts a model manifest (and so
fetches and serves its weights) only when one of them signed it (``docs/weights.md``). The list is the
``SWARM_TRUSTED_PUBLISHERS`` setting (environment: comma-separated ``ed25519:<base64url>`` keys); a
malformed key is left out of the answer (and logged), never sent to nodes.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from swarmnode.store import ManifestError
from swarmnode.store.manifest import key_id, parse_publisher_key, publisher_key_text

__all__ = ["publishers_view", "trusted_publishers"]

log = logging.getLogger("portal.swarm")


def _parsed(text: str) -> bytes | None:
    try:
        return parse_publisher_key(text)
    except ManifestError:
        log.warning("SWARM_TRUSTED_PUBLISHERS entry %r is not an ed25519:<base64url> public key: ignored", text[:40])
        return None


def trusted_publishers() -> list[dict]:
    """The setting's well-formed keys: ``[{"key": "ed25519:...", "key_id": <SHA-256 hex>}]``, in its order."""
    out, seen = [], set()
    for text in getattr(settings, "SWARM_TRUSTED_PUBLISHERS", []):
        raw = _parsed(str(text))
        if raw is not None and raw not in seen:
            seen.add(raw)
            out.append({"key": publisher_key_text(raw), "key_id": key_id(raw)})
    return out


@require_GET
def publishers_view(request: HttpRequest) -> JsonResponse:
    """``GET /api/v1/publishers/``: the trusted publisher keys (public: anyone may read whom the swarm trusts)."""
    response = JsonResponse({"publishers": trusted_publishers()})
    response["Cache-Control"] = "public, max-age=60"
    return response
