"""The cache pool: token budget, ownership, idle eviction."""

import pytest

from swarmnode.protocol import ProtocolError
from swarmnode.runtime import CachePool, OutOfCache


def test_it_refuses_a_session_that_does_not_fit():
    pool = CachePool(100)
    pool.open("a", 60, None, owner=1)
    with pytest.raises(OutOfCache) as info:
        pool.open("b", 50, None, owner=1)
    assert info.value.code == "out_of_cache"
    assert "40" in info.value.message
    pool.open("c", 40, None, owner=1)
    assert pool.tokens_left == 0


def test_it_frees_room_when_a_session_closes():
    pool = CachePool(100)
    pool.open("a", 100, None, owner=1)
    pool.close("a")
    pool.open("b", 100, None, owner=1)


def test_it_hides_sessions_from_other_connections():
    pool = CachePool(100)
    pool.open("a", 10, None, owner="alice")
    with pytest.raises(ProtocolError, match="unknown_session"):
        pool.get("a", owner="mallory")
    assert pool.get("a", owner="alice").session_id == "a"


def test_it_refuses_duplicate_ids():
    pool = CachePool(100)
    pool.open("a", 10, None, owner=1)
    with pytest.raises(ProtocolError, match="session_exists"):
        pool.open("a", 10, None, owner=2)


def test_it_evicts_idle_sessions_and_closes_a_dead_connections_sessions():
    pool = CachePool(100, idle_timeout=5)
    a = pool.open("a", 10, None, owner=1)
    pool.open("b", 10, None, owner=2)
    pool.open("c", 10, None, owner=2)
    assert pool.evict_idle(now=a.last_used + 1) == []
    assert pool.evict_idle(now=a.last_used + 60) == ["a", "b", "c"]
    pool.open("d", 10, None, owner=3)
    pool.open("e", 10, None, owner=4)
    assert pool.close_owned_by(3) == 1
    assert list(pool.sessions) == ["e"]


def test_each_row_of_a_session_takes_max_length_tokens():
    pool = CachePool(1000)
    wide = pool.open("wide", 100, None, owner=1)
    with pytest.raises(OutOfCache, match="6400 cache tokens \\(64 rows\\) but only 1000 are free"):
        pool.set_rows(wide, 64)
    assert wide.rows == 1 and pool.tokens_left == 900  # a refused resize keeps what the session had
    pool.set_rows(wide, 10)  # its own reservation counts as free for it: exactly the whole budget
    assert pool.tokens_left == 0
    with pytest.raises(OutOfCache):
        pool.open("b", 1, None, owner=2)
    pool.set_rows(wide, 4)
    assert pool.tokens_left == 600
    wide.position = 1  # after its first step the cache's rows are fixed
    with pytest.raises(ProtocolError, match="bad_shape"):
        pool.set_rows(wide, 2)
    pool.close("wide")
    assert pool.tokens_left == 1000
