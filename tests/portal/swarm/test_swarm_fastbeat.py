"""The heartbeat fast path (portal/swarm/fastbeat.py) in front of Django, probed as a stranger would.

Through ``portal.wsgi.application`` (gunicorn's entry point) on PostgreSQL + Redis: a vouched online node's
heartbeat is answered without Django and without a query; a revoked, expired or banned owner's token, a banned
node, a foreign node id, a forged token and odd bodies all reach Django at once and get its answer.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from portal.accounts import tokencache
from portal.accounts.models import NodeToken
from portal.swarm import beats, fastbeat, tracker
from portal.swarm.models import Node
from portal.wsgi import LeanHandler, application


@pytest.fixture
def _fast_path(settings) -> None:
    if not beats.enabled():
        pytest.skip("the fast path needs write-behind with the Redis cache (REDIS_URL)")
    settings.SWARM_HEARTBEAT_FAST_PATH = True


class Answer:
    """A WSGI answer, and whether Django saw the request."""

    def __init__(self, status: int, headers: dict, content: bytes, django: bool, queries: int) -> None:
        self.status, self.headers, self.content, self.django, self.queries = status, headers, content, django, queries

    def json(self):
        return json.loads(self.content)


@pytest.fixture
def call(db, _fast_path):
    """``call(path, body, token, **environ)``: a POST through ``portal.wsgi.application`` (or ``app=``); an
    :class:`Answer`. ``body`` is a dict (sent as JSON) or raw bytes."""

    def _call(path: str, body=None, token: str | None = None, content_type="application/json", app=None, **extra):
        if token is not None:
            extra.setdefault("HTTP_AUTHORIZATION", f"Bearer {token}")
        data = body if isinstance(body, bytes) else json.dumps({} if body is None else body).encode()
        environ = RequestFactory().generic("POST", path, data, content_type=content_type, **extra).environ
        environ.update({k: v for k, v in extra.items() if v is None})
        for name in [k for k, v in environ.items() if v is None]:
            del environ[name]
        answer, seen = {}, []

        def start_response(status, headers, exc_info=None):
            answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

        def started(**kwargs):
            seen.append(True)

        # As Django's test client does: the request signals must not close the test transaction's connection.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        request_started.connect(started)
        try:
            with CaptureQueriesContext(connection) as queries:
                response = (app or application)(environ, start_response)
                content = b"".join(response)
                if hasattr(response, "close"):
                    response.close()
        finally:
            request_started.disconnect(started)
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        return Answer(answer["status"], answer["headers"], content, bool(seen), len(queries.captured_queries))

    return _call


@pytest.fixture
def online(owner_token, register, call) -> str:
    """The heartbeat path of the owner's node, online and vouched after one heartbeat through Django."""
    node_id = register(owner_token).json()["id"]
    path = f"/api/v1/nodes/{node_id}/heartbeat/"
    first = call(path, {"cache_tokens_left": 1000}, owner_token)
    assert first.status == 200 and first.django
    return path


def _node(path: str) -> Node:
    return Node.objects.get(pk=int(path.split("/")[4]))


def test_it_answers_a_vouched_heartbeat_without_django_and_the_flush_writes_it(online, owner_token, call):
    seen = _node(online).last_seen_at
    answer = call(online, {"cache_tokens_left": 5, "open_sessions": 2, "throughput": 12.5}, owner_token)
    assert (answer.status, answer.django, answer.queries) == (200, False, 0)
    assert answer.json() == {"id": _node(online).pk, "state": "online", "heartbeat_interval": 10.0}
    assert _node(online).cache_tokens_left == 1000  # buffered, not written yet
    assert tracker.flush_heartbeats() == 1
    node = _node(online)
    assert (node.cache_tokens_left, node.open_sessions, node.throughput) == (5, 2, 12.5)
    assert node.last_seen_at > seen


def test_its_answer_is_djangos(online, owner_token, call, settings):
    fast = call(online, {}, owner_token)
    settings.SWARM_HEARTBEAT_FAST_PATH = False
    slow = call(online, {}, owner_token)
    assert (fast.django, slow.django) == (False, True)
    assert (fast.status, fast.content) == (slow.status, slow.content)
    assert fast.headers.keys() == slow.headers.keys()
    assert {k: v for k, v in fast.headers.items() if k != "X-Request-ID"} == {
        k: v for k, v in slow.headers.items() if k != "X-Request-ID"
    }
    assert fast.headers["X-Request-ID"] != slow.headers["X-Request-ID"]


def test_its_answer_over_https_carries_the_same_security_headers(online, owner_token, call, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT, settings.SECURE_HSTS_SECONDS = True, 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = settings.SECURE_HSTS_PRELOAD = True
    app = fastbeat.FastHeartbeats(LeanHandler(settings.TRACKER_MIDDLEWARE))  # middleware reads settings once
    fast = call(online, {}, owner_token, app=app, HTTP_X_FORWARDED_PROTO="https")
    settings.SWARM_HEARTBEAT_FAST_PATH = False
    slow = call(online, {}, owner_token, app=app, HTTP_X_FORWARDED_PROTO="https")
    assert (fast.django, slow.django) == (False, True)
    assert fast.headers["Strict-Transport-Security"] == slow.headers["Strict-Transport-Security"]
    assert fast.headers.keys() == slow.headers.keys()


def test_plain_http_still_gets_djangos_redirect(online, owner_token, call, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    app = fastbeat.FastHeartbeats(LeanHandler(settings.TRACKER_MIDDLEWARE))
    answer = call(online, {}, owner_token, app=app, HTTP_X_FORWARDED_PROTO="http")
    assert answer.status == 301 and answer.django


def test_a_revoked_token_stops_at_once(online, owner_token, call):
    assert not call(online, {}, owner_token).django
    NodeToken.objects.get().revoke()
    answer = call(online, {}, owner_token)
    assert answer.status == 401 and answer.django


def test_a_deleted_token_stops_at_once(online, owner_token, call):
    assert not call(online, {}, owner_token).django
    Node.objects.all().delete()  # the node's token is protected by its nodes
    NodeToken.objects.get().delete()
    assert call(online, {}, owner_token).status == 401


def test_a_deactivated_user_stops_at_once(online, owner_token, owner, call):
    assert not call(online, {}, owner_token).django
    owner.is_active = False
    owner.save()
    answer = call(online, {}, owner_token)
    assert answer.status == 401 and answer.django


def test_a_user_banned_in_the_admin_stops_at_once(online, owner_token, owner, call):
    assert not call(online, {}, owner_token).django
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.com", "root-password-1"))
    page = admin.post("/admin/auth/user/", {"action": "ban", "_selected_action": [owner.pk]})
    assert page.status_code == 302
    assert call(online, {}, owner_token).status == 401


def test_an_expired_token_stops_when_it_expires(owner, register, call, settings):
    token, plain = NodeToken.create_for(owner, "short-lived", expires_at=timezone.now() + timedelta(seconds=2))
    node_id = register(plain).json()["id"]
    path = f"/api/v1/nodes/{node_id}/heartbeat/"
    assert call(path, {}, plain).django
    assert not call(path, {}, plain).django
    client, cache = beats._redis()
    assert 0 < client.pttl(tokencache.key(cache, token.digest)) <= 2000  # never cached past its expiry
    time.sleep(max(0.0, (token.expires_at - timezone.now()).total_seconds()) + 0.05)
    answer = call(path, {}, plain)
    assert answer.status == 401 and answer.django


def test_another_accounts_node_id_falls_through_to_a_404(online, other_token, register, call):
    theirs = register(other_token, url="ws://127.0.0.1:40002/layerswarm/v1").json()["id"]
    assert call(f"/api/v1/nodes/{theirs}/heartbeat/", {}, other_token).django  # cached and vouched
    assert not call(f"/api/v1/nodes/{theirs}/heartbeat/", {}, other_token).django
    answer = call(online, {}, other_token)
    assert answer.status == 404 and answer.django


def test_a_banned_node_is_refused_at_once(online, owner_token, call):
    assert not call(online, {}, owner_token).django
    tracker.set_banned(Node.objects.filter(pk=_node(online).pk), True)
    answer = call(online, {}, owner_token)
    assert answer.status == 403 and answer.json()["error"] == "banned"
    assert tracker.flush_heartbeats() == 0  # the buffered beat does not revive it


def test_a_node_that_left_is_told_to_register_again(online, owner_token, call, node_client):
    assert node_client(owner_token).post(online.replace("heartbeat", "leave")).status_code == 200
    assert call(online, {}, owner_token).status == 410


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # same prefix, another secret
        lambda t: t.rsplit("_", 1)[0] + "_",  # only the prefix
        lambda t: t + " ",  # stripped by DRF: the same token (then 200)
        lambda t: "lsn_" + NodeToken.objects.get(name="alice's GPU").digest,  # the stored digest as a secret
        lambda t: t + "\u00e9",  # not ASCII
    ],
)
def test_a_forged_token_never_passes(online, owner_token, call, forge):
    forged = forge(owner_token)
    answer = call(online, {}, forged)
    if forged.strip() == owner_token:
        assert answer.status == 200
    else:
        assert answer.status == 401 and answer.django


def test_other_schemes_and_missing_tokens_go_to_django(online, owner_token, call):
    for header in (f"Token {owner_token}", f"Bearer  {owner_token}", "Bearer", "", f"Basic {owner_token}"):
        answer = call(online, {}, HTTP_AUTHORIZATION=header)
        assert answer.django and answer.status == 401
    answer = call(online, {}, HTTP_AUTHORIZATION=f"bEaReR {owner_token}")  # DRF takes any case too
    assert (answer.status, answer.django) == (200, False)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"[]", "application/json", 400),
        (b"null", "application/json", 400),
        (b'{"cache_tokens_left": -1}', "application/json", 400),
        (b'{"cache_tokens_left": 2147483648}', "application/json", 400),
        (b'{"open_sessions": 1.5}', "application/json", 400),
        (b'{"cache_tokens_left": true}', "application/json", 400),
        (b'{"throughput": NaN}', "application/json", 400),
        (b'{"throughput": 1e999}', "application/json", 400),
        (b'{"throughput": "inf"}', "application/json", 400),
        (b'{"throughput": -1}', "application/json", 400),
        (b'{"throughput": 1000000001}', "application/json", 400),
        (b'{"cache_tokens_left": ' + b"9" * 5000 + b"}", "application/json", 400),
        (b"[" * 3000 + b"]" * 3000, "application/json", 400),
        (b"\xff\xfe{\x00}\x00", "application/json", 400),
        (b"\xef\xbb\xbf{}", "application/json", 400),
        (b"{", "application/json", 400),
        (b'{"cache_tokens_left": 1}', "text/plain", 415),
        (b'{"pad": "' + b"x" * 70000 + b'"}', "application/json", 413),
    ],
)
def test_odd_bodies_get_djangos_refusal_never_a_500(online, owner_token, call, body, content_type, status):
    answer = call(online, body, owner_token, content_type=content_type)
    assert (answer.status, answer.django) == (status, True)
    assert tracker.flush_heartbeats() == 0


def test_a_body_django_takes_and_the_fast_path_does_not_reaches_django_whole(online, owner_token, call):
    answer = call(online, b'{"cache_tokens_left": "7", "throughput": null}', owner_token)
    assert (answer.status, answer.django) == (200, True)
    assert _node(online).cache_tokens_left == 7 or tracker.flush_heartbeats() == 1
    assert _node(online).cache_tokens_left == 7


def test_a_body_without_a_length_goes_to_django(online, owner_token, call):
    answer = call(online, b"{}", owner_token, CONTENT_LENGTH=None)
    assert answer.django and answer.status in (200, 400)


def test_unknown_fields_are_ignored_as_drf_does(online, owner_token, call):
    answer = call(online, {"cache_tokens_left": 3, "state": "offline", "banned": False}, owner_token)
    assert (answer.status, answer.django) == (200, False)
    tracker.flush_heartbeats()
    assert (_node(online).cache_tokens_left, _node(online).state) == (3, "online")


def test_the_user_rate_limit_still_holds(online, owner_token, call, settings):
    settings.API_THROTTLE_RATES = {**settings.API_THROTTLE_RATES, "user": "5/min"}  # 2 spent: register, beat
    answers = [call(online, {}, owner_token) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert [a.django for a in answers] == [False, False, False, True]


def test_it_is_off_with_the_flag(online, owner_token, call, settings):
    settings.SWARM_HEARTBEAT_FAST_PATH = False
    answer = call(online, {}, owner_token)
    assert answer.status == 200 and answer.django


def test_parse_beat_takes_only_what_the_serializer_takes_as_it_is():
    assert fastbeat.parse_beat(b"{}") == (0, 0, None)
    assert fastbeat.parse_beat(b'{"throughput": 3}') == (0, 0, 3.0)
    assert fastbeat.parse_beat(b'{"cache_tokens_left": 2147483647, "open_sessions": 0}') == (2**31 - 1, 0, None)
    for odd in (b'{"open_sessions": "1"}', b'{"throughput": false}', b"1", b'"x"', b'{"throughput": Infinity}'):
        assert fastbeat.parse_beat(odd) is None
