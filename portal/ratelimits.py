"""Request rate limits (#17 finding 14): DRF throttles for ``/api/``, path rules for pages and ``/v1/``.

Both count in the default cache (Redis in production, so every daphne worker shares the counts; a local
memory cache when embedded) and both key on the visitor's address as :mod:`portal.middleware` computes it
(``REMOTE_ADDR``), or on the user / API key where one is known.

- ``/api/...`` (DRF): :class:`AnonThrottle` per address, :class:`UserThrottle` per user, and
  :class:`ScopedThrottle` for views that name a ``throttle_scope`` (client reports). Rates:
  ``API_THROTTLE_RATES``. Over the limit: 429 with ``Retry-After``.
- Plain views and the OpenAI-compatible ``/v1/`` (not DRF): :class:`RateLimitMiddleware` applies the
  ``RATE_LIMITS`` rules (log-in, sign-up, API key and node token creation, ``/v1/``) with django-ratelimit.

Rates are read at request time, so settings overrides (tests, ``settings.py``) take effect at once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.http import HttpResponse, JsonResponse
from django_ratelimit.core import get_usage
from redis import Redis
from redis.exceptions import ResponseError
from rest_framework import throttling

# INCR, and the window's expiry set with the first request (and never left unset: a counter without one would
# refuse its caller for ever). Returns {requests in the window, milliseconds left}.
_COUNT_HIT = """
local hits = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); left = tonumber(ARGV[1]) end
return {hits, left}
"""


@lru_cache(maxsize=16)
def _count_script(pool):
    """:data:`_COUNT_HIT`, registered once per connection pool (EVALSHA; loaded again if Redis forgot it)."""
    return Redis(connection_pool=pool).register_script(_COUNT_HIT)


def count_hit(key: str, seconds: int) -> tuple[int, float]:
    """Count one request against ``key`` in the default cache, in a window that opens with the key's first
    request and lasts ``seconds``.

    Returns:
        The requests counted in the window (this one included) and the seconds left until it closes
        (``seconds`` where the cache cannot tell).
    """
    cache = caches["default"]
    if isinstance(cache, RedisCache):
        # One command, atomic across workers: DRF's own throttles read and rewrite the caller's whole list of
        # request times (two round trips, and a cost growing with the rate: every heartbeat paid it).
        full = cache.make_key(key)  # our own keys: a user id or an address, nothing to validate
        script = _count_script(cache._cache._get_connection_pool(write=True))
        try:
            hits, left_ms = script(keys=[full], args=[seconds * 1000])
        except ResponseError:  # not a counter (written by something else): start the window again
            script.registered_client.set(full, 1, ex=seconds)
            return 1, float(seconds)
        return hits, left_ms / 1000
    if cache.add(key, 1, seconds):
        return 1, float(seconds)
    try:
        return cache.incr(key), float(seconds)
    except ValueError:  # expired between add and incr: a new window
        cache.set(key, 1, seconds)
        return 1, float(seconds)


class _SettingsRates:
    """Read the rate for ``self.scope`` from ``API_THROTTLE_RATES`` on each request (not at import), and count
    requests with :func:`count_hit` (one counter per caller and window) instead of DRF's list of request times."""

    cache_format = "throttle_count_%(scope)s_%(ident)s"  # not DRF's key: its value there is a list, not a count

    def get_rate(self):
        return settings.API_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        hits, self.left = count_hit(key, self.duration)
        return hits <= self.num_requests

    def wait(self) -> float:
        """Seconds until the caller's window closes (``Retry-After``)."""
        return self.left


class AnonThrottle(_SettingsRates, throttling.AnonRateThrottle):
    """Anonymous API requests, per visitor address (``anon`` rate)."""


class UserThrottle(_SettingsRates, throttling.UserRateThrottle):
    """Authenticated API requests, per user (``user`` rate; API keys and node tokens count as their user)."""


class ScopedThrottle(_SettingsRates, throttling.ScopedRateThrottle):
    """Views with a ``throttle_scope`` (``reports``...), per user or address; no rate configured: no limit."""

    def allow_request(self, request, view):
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope or not self.get_rate():
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return _SettingsRates.allow_request(self, request, view)


@dataclass(frozen=True)
class Rule:
    """One limit: requests with ``methods`` to paths matching ``path``, counted per ``key``, at most ``rate``.

    ``key`` is ``ip`` (the visitor's address), ``user`` (the signed-in user, else the address), ``bearer``
    (the ``Authorization`` header's secret, else the address) or ``post:<field>`` (a form field, e.g. the
    username being tried at log-in).
    """

    name: str
    methods: tuple[str, ...]
    path: str
    key: str
    rate: str


@lru_cache(maxsize=4)
def _rules(raw: tuple[tuple[str, str, str, str, str], ...]) -> tuple[tuple[Rule, re.Pattern], ...]:
    rules = (Rule(n, tuple(m.upper().split(",")), p, k, r) for n, m, p, k, r in raw)
    return tuple((rule, re.compile(rule.path)) for rule in rules)


def _ip(request) -> str:
    return "ip:" + request.META.get("REMOTE_ADDR", "")


def _key(rule: Rule, request) -> str:
    if rule.key == "user":
        user = getattr(request, "user", None)
        return f"user:{user.pk}" if user is not None and user.is_authenticated else _ip(request)
    if rule.key == "bearer":
        header = request.META.get("HTTP_AUTHORIZATION", "")
        return "bearer:" + hashlib.sha256(header.encode()).hexdigest() if header else _ip(request)
    if rule.key.startswith("post:"):
        return "post:" + str(request.POST.get(rule.key[5:], ""))[:200].lower()
    return _ip(request)


def limited_by(request) -> Rule | None:
    """The first rule this request exceeds (counting it against every rule that matches), or None."""
    hit = None
    for rule, pattern in _rules(tuple(tuple(r) for r in settings.RATE_LIMITS)):
        if request.method not in rule.methods or not pattern.search(request.path_info):
            continue
        usage = get_usage(
            request,
            group=f"layerswarm:{rule.name}",
            key=lambda g, r, rule=rule: _key(rule, r),
            rate=rule.rate,
            method=rule.methods,
            increment=True,
        )
        if usage and usage["should_limit"] and hit is None:
            hit = rule
    return hit


def too_many(request, rule: Rule) -> HttpResponse:
    """429 in the shape the caller expects: OpenAI's error object on ``/v1/``, JSON on the API, text on pages."""
    message = f"too many requests ({rule.name}: at most {rule.rate}); try again later"
    if request.path_info.startswith("/v1/"):
        body = {"error": {"message": message, "type": "rate_limit_exceeded", "param": None, "code": "rate_limited"}}
        response = JsonResponse(body, status=429)
    elif request.path_info.startswith("/api/") or "application/json" in request.META.get("HTTP_ACCEPT", ""):
        response = JsonResponse({"error": "rate_limited", "detail": message}, status=429)
    else:
        response = HttpResponse(message, status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = "60"
    return response


class RateLimitMiddleware:
    """Applies ``RATE_LIMITS`` before the view runs (after authentication, so ``user`` keys work)."""

    sync_capable, async_capable = True, False

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        rule = limited_by(request)
        if rule is not None:
            return too_many(request, rule)
        return self.get_response(request)
