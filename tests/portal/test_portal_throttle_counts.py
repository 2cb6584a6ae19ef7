"""The API throttles' counter (``portal.ratelimits.count_hit``): one count per caller and window, atomic in Redis,
never stuck (a counter always expires, and a value that is not a counter starts a new window)."""

import pytest
from django.conf import settings
from django.core.cache import cache

from portal.ratelimits import count_hit


def test_it_counts_requests_in_a_window_that_opens_with_the_first():
    assert [count_hit("test-window", 60)[0] for _ in range(3)] == [1, 2, 3]
    assert 0 < count_hit("test-window", 60)[1] <= 60
    assert count_hit("test-other-caller", 60)[0] == 1


@pytest.mark.skipif(not settings.CACHES["default"]["BACKEND"].endswith("RedisCache"), reason="Redis run only")
def test_a_redis_counter_always_expires_and_survives_a_foreign_value():
    client = cache._cache.get_client(write=True)
    key = cache.make_key("test-stuck")
    client.set(key, 5)  # a counter that lost its expiry (say, written by hand): it must not refuse for ever
    hits, left = count_hit("test-stuck", 30)
    assert hits == 6 and 0 < left <= 30 and 0 < client.ttl(key) <= 30
    cache.set("test-foreign", ["not", "a", "counter"])  # DRF's old request-time list under a key
    assert count_hit("test-foreign", 30)[0] == 1 and count_hit("test-foreign", 30)[0] == 2
