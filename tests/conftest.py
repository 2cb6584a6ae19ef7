"""Fixtures every test shares: fresh rate-limit counters per test.

Rate-limit and throttle counters live in the default cache (``portal/ratelimits.py``): a process-local
memory cache in the embedded run, Redis in the PostgreSQL + Redis run, where they would outlive the test
(and the run). Each test starts with none, so the suite's many requests from 127.0.0.1 never add up.
"""

import pytest


def _clear_rate_limits() -> None:
    from django.conf import settings

    if not settings.configured or "default" not in getattr(settings, "CACHES", {}):
        return
    from django.core.cache import cache

    backend = settings.CACHES["default"]["BACKEND"]
    if backend.endswith("LocMemCache"):
        cache.clear()
    elif backend.endswith("RedisCache"):
        # Not cache.clear(): that is FLUSHDB, and the channel layer may share the database. Only our keys.
        client = cache._cache.get_client(write=True)
        prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    _clear_rate_limits()
    yield


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Every test under ``tests/portal`` carries the ``portal`` marker (the Makefile runs the portal's slow
    end-to-end tests on PostgreSQL + Redis only: ``-m "not (slow and portal)"`` in the embedded run)."""
    portal_dir = config.rootpath / "tests" / "portal"
    for item in items:
        if portal_dir in item.path.parents:
            item.add_marker(pytest.mark.portal)
