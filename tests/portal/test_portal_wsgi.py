"""The WSGI entry point (gunicorn's workers, production's /api/): node heartbeats take the short middleware chain
(``TRACKER_MIDDLEWARE``) and answer exactly as through the whole one; every other request takes the whole one."""

from __future__ import annotations

import json

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import RequestFactory

from portal.swarm.models import Node
from portal.wsgi import application


@pytest.fixture
def call(db):
    """``call(method, path, body=None, token=None)`` through ``portal.wsgi.application``: (status, headers, body)."""

    def _call(method: str, path: str, body: dict | None = None, token: str | None = None):
        extra = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
        data = json.dumps(body or {})
        environ = RequestFactory().generic(method, path, data, content_type="application/json", **extra).environ
        answer = {}

        def start_response(status, headers, exc_info=None):
            answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

        # As Django's test client does: the request signals must not close the test transaction's connection.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            response = application(environ, start_response)
            content = b"".join(response)
            response.close()
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        return answer["status"], answer["headers"], content

    return _call


def test_a_heartbeat_takes_the_short_chain_and_answers_as_before(call, owner_token, register, other_token):
    node_id = register(owner_token).json()["id"]
    beat = f"/api/v1/nodes/{node_id}/heartbeat/"
    status, headers, content = call("POST", beat, {"cache_tokens_left": 3}, owner_token)
    assert status == 200 and json.loads(content)["state"] == "online"
    assert Node.objects.get(pk=node_id).cache_tokens_left == 3
    assert headers["X-Request-ID"] and headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in headers  # the short chain: no page headers on a node's JSON
    # Refusals are the same as through the whole chain.
    assert call("POST", beat, {"cache_tokens_left": -1}, owner_token)[0] == 400
    assert call("POST", beat, {}, other_token)[0] == 404
    assert call("POST", beat, {}, "lsn_forged")[0] == 401
    assert call("POST", beat, {})[0] == 401


def test_every_other_request_takes_the_whole_chain(call, smollm2):
    status, headers, _ = call("GET", "/api/v1/models/")
    assert status == 200 and "Content-Security-Policy" in headers
