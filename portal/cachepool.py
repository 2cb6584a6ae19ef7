"""One Redis connection pool per process for Django's cache (rate-limit counters, throttles).

Django builds a cache object per thread and, under ASGI, per request (``caches`` is a context-local), and each
cache object opens its own Redis connection pool: under daphne every request that touched the cache connected
to Redis anew (a TCP handshake and a HELLO per request; ``make bench-portal`` showed it). Pools of redis-py are
thread-safe and notice a fork, so one per URL and options serves every cache object of the process.
"""

from __future__ import annotations

from functools import cache

from redis import ConnectionPool


class SharedConnectionPool(ConnectionPool):
    """``CACHES[...]["OPTIONS"]["pool_class"]``: ``from_url`` hands out the process's one pool per URL and options."""

    @classmethod
    def from_url(cls, url: str, **kwargs) -> ConnectionPool:
        return _pool(url, tuple(sorted(kwargs.items())))


@cache
def _pool(url: str, options: tuple) -> ConnectionPool:
    return ConnectionPool.from_url(url, **dict(options))
