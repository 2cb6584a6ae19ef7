"""The heartbeat fast path (#24 goal 5): a vouched online node's heartbeat answered in front of Django.

``portal.wsgi`` hands every ``POST /api/v1/nodes/<id>/heartbeat/`` to :class:`FastHeartbeats` first. It answers
the common case, an online node the tracker vouched for (:mod:`portal.swarm.beats`) sending a plain JSON body,
with no Django request, no DRF and no PostgreSQL: one Lua call in Redis checks that

1. the bearer token's digest is in the token cache (:mod:`portal.accounts.tokencache`: written when the token
   last authenticated in the database, at most 60 s ago and never past its expiry; withdrawn at once when the
   token is revoked, edited or deleted, or its owner banned or deactivated),
2. that token is the one the tracker vouched for this node (withdrawn at once on ban, leave, expiry),
3. the owner is under the per-user API rate (``API_THROTTLE_RATES["user"]``, the same Redis counter the DRF
   throttle counts in),

and then buffers the beat in the pending hash exactly as :func:`portal.swarm.beats.admit` does; the flush
writes it. Anything else falls through to Django untouched (the body it read is handed on): no vouch or no
cached token (Django authenticates, vouches and caches for next time), a foreign node id (404), a banned node
(403), an offline one (410), a forged, revoked or expired token (401), the rate exceeded (429), a body the
fast path does not take as it is (a non-object, a string where a number is expected, a value out of range,
NaN, a non-UTF-8 or chunked body, another content type: Django answers 400, 413 or 415 or accepts it), a
plain-HTTP request where ``SECURE_SSL_REDIRECT`` wants a redirect, and any Redis error.

The answer equals Django's: status 200, the same JSON body and content type, the headers of the lean chain
(``X-Request-ID``, ``SecurityMiddleware``'s headers, ``Vary``/``Allow`` as DRF sets them). What it skips:
``django_http_*`` request metrics (it counts ``layerswarm_fast_heartbeats`` instead), the token's
``last_used_at`` (written by the database path, so within about a minute), and request log events.

``SWARM_HEARTBEAT_FAST_PATH`` (on by default with write-behind) turns it off; without Redis it is never on.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
import uuid

from django.conf import settings
from django.core.cache import caches
from prometheus_client import Counter
from redis.exceptions import RedisError
from rest_framework.throttling import SimpleRateThrottle

from portal.accounts import bearer, tokencache
from portal.swarm import beats

HEARTBEAT_PATH = re.compile(r"^/api/v1/nodes/([0-9]{1,18})/heartbeat/$")
MAX_BODY = 4096  # a heartbeat is ~80 bytes; bigger ones go to Django (which caps at API_MAX_JSON_BYTES)
MAX_INT32 = 2**31 - 1  # portal.api.serializers.MAX_INT32
JSON_TYPES = frozenset({"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"})

FAST_HEARTBEATS = Counter("layerswarm_fast_heartbeats", "Heartbeats answered by the fast path (not in django_http_*)")

# KEYS: the token cache entry, the node's vouch, the pending hash. ARGV: node id, entry, throttle window in ms
# ('' for none), the throttle counter's key without the user id, requests allowed per window.
# Returns 1 if the beat is buffered; 0: Django answers (and, past the rate, counts it again and refuses it).
_ADMIT = """
local cached = redis.call('GET', KEYS[1])
if not cached then return 0 end
local colon = string.find(cached, ':', 1, true)
if not colon then return 0 end
if redis.call('GET', KEYS[2]) ~= string.sub(cached, 1, colon - 1) then return 0 end
if ARGV[3] ~= '' then
  local counter = ARGV[4] .. string.sub(cached, colon + 1)
  local hits = redis.call('INCR', counter)
  if redis.call('PTTL', counter) < 0 then redis.call('PEXPIRE', counter, ARGV[3]) end
  if hits > tonumber(ARGV[5]) then return 0 end
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1
"""


def enabled() -> bool:
    """Whether the fast path may answer (``SWARM_HEARTBEAT_FAST_PATH`` and write-behind with Redis)."""
    return settings.SWARM_HEARTBEAT_FAST_PATH and beats.enabled()


def _reject_constant(name: str):
    raise ValueError(name)


def parse_beat(body: bytes) -> tuple[int, int, float | None] | None:
    """``(cache_tokens_left, open_sessions, throughput)`` from a body ``HeartbeatSerializer`` takes as it is, or
    None (then Django decides: some of those it accepts, like ``"5"`` for 5, the rest are its 400)."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if type(data) is not dict:
        return None
    left, sessions = data.get("cache_tokens_left", 0), data.get("open_sessions", 0)
    if type(left) is not int or type(sessions) is not int:
        return None
    if not (0 <= left <= MAX_INT32 and 0 <= sessions <= MAX_INT32):
        return None
    throughput = data.get("throughput")
    if throughput is not None:
        if type(throughput) not in (int, float):
            return None
        throughput = float(throughput)
        if not (math.isfinite(throughput) and 0 <= throughput <= 1e9):
            return None
    return left, sessions, throughput


def _is_secure(environ) -> bool:
    """``HttpRequest.is_secure`` on a WSGI environ."""
    if settings.SECURE_PROXY_SSL_HEADER:
        header, secure_value = settings.SECURE_PROXY_SSL_HEADER
        value = environ.get(header)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return environ.get("wsgi.url_scheme") == "https"


def _headers(secure: bool) -> list[tuple[str, str]]:
    """What the lean chain's response carries (DRF's ``Response``, then ``SecurityMiddleware``, ``X-Request-ID``)."""
    headers = [
        ("Content-Type", "application/json"),
        ("Vary", "Accept"),
        ("Allow", "POST, OPTIONS"),
    ]
    if settings.SECURE_HSTS_SECONDS and secure:
        sts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            sts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            sts += "; preload"
        headers.append(("Strict-Transport-Security", sts))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append(("X-Content-Type-Options", "nosniff"))
    policy = settings.SECURE_REFERRER_POLICY
    if policy:
        policy = ",".join(v.strip() for v in policy.split(",")) if isinstance(policy, str) else ",".join(policy)
        headers.append(("Referrer-Policy", policy))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    headers.append(("X-Request-ID", uuid.uuid4().hex))
    return headers


def _throttle_args(cache) -> list[str]:
    """ARGV 3-5 of :data:`_ADMIT`: the ``user`` rate as ``portal.ratelimits.UserThrottle`` counts it."""
    rate = settings.API_THROTTLE_RATES.get("user")
    if not rate:
        return ["", "", "0"]
    allowed, seconds = SimpleRateThrottle.parse_rate(None, rate)
    return [str(seconds * 1000), cache.make_key("throttle_count_user_"), str(allowed)]


def admit(environ) -> int | None:
    """Buffer the heartbeat ``environ`` carries if the fast path may answer it; return its node id, else None.

    Whatever it reads of the body is put back (``wsgi.input``) for Django.
    """
    if environ.get("REQUEST_METHOD") != "POST" or not enabled():
        return None
    match = HEARTBEAT_PATH.match(environ.get("PATH_INFO", ""))
    if match is None or (settings.SECURE_SSL_REDIRECT and not _is_secure(environ)):
        return None
    scheme, _, plain = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer" or not plain.startswith("lsn_") or len(plain) > 200 or not plain.isascii():
        return None
    if environ.get("CONTENT_TYPE", "").lower() not in JSON_TYPES:
        return None
    length = environ.get("CONTENT_LENGTH", "")
    if not (length.isascii() and length.isdigit()) or not 0 < int(length) <= MAX_BODY:
        return None
    body = environ["wsgi.input"].read(int(length))
    environ["wsgi.input"] = io.BytesIO(body)
    beat = parse_beat(body) if len(body) == int(length) else None
    if beat is None:
        return None
    node_id = int(match.group(1))
    cache = caches["default"]
    # The script object holds a client of the pool: no Redis client built per request (a fifth of this path).
    script = beats._pool_script(cache._cache._get_connection_pool(write=True), _ADMIT)
    entry = json.dumps([time.time(), beat[0], beat[1], beat[2]])
    keys = [tokencache.key(cache, bearer.digest(plain.strip())), beats._vouch_key(cache, node_id)]
    keys.append(beats._pending_key(cache))
    try:
        buffered = script(keys=keys, args=[str(node_id), entry, *_throttle_args(cache)])
    except RedisError:
        return None
    return node_id if buffered == 1 else None


class FastHeartbeats:
    """WSGI: answers what :func:`admit` takes, hands everything else to ``django``."""

    def __init__(self, django) -> None:
        self.django = django

    def __call__(self, environ, start_response):
        node_id = admit(environ)
        if node_id is None:
            return self.django(environ, start_response)
        body = {"id": node_id, "state": "online", "heartbeat_interval": settings.SWARM_HEARTBEAT_INTERVAL}
        content = json.dumps(body, separators=(",", ":")).encode()
        start_response("200 OK", _headers(_is_secure(environ)))
        FAST_HEARTBEATS.inc()
        return [content]
