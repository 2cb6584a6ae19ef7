"""The prefix store: longest shared prefix by chained input hashes, salts kept apart, LRU budget; the
tracker that runs sessions' steps through it (spec §4.9), with a stand-in scheduler and backend."""

import asyncio

import numpy as np

from swarmnode.protocol import tensor_from_numpy
from swarmnode.runtime.cache import SessionState
from swarmnode.runtime.prefix import Prefix, PrefixStore, PrefixTracker, chain_hashes


def rows(seed: int, n: int, dtype="float32"):
    return np.random.default_rng(seed).standard_normal((1, n, 8)).astype(dtype)


def prefix(salt: str, x: np.ndarray) -> Prefix:
    wire = tensor_from_numpy(x)
    return Prefix(chain_hashes(salt, wire), kv=("kv", x.shape[1]), output=wire)


def test_the_hash_at_a_position_covers_every_row_up_to_it():
    a = rows(0, 6)
    b = a.copy()
    b[0, 4] += 1.0  # differs from position 4 on
    ha, hb = chain_hashes("s", tensor_from_numpy(a)), chain_hashes("s", tensor_from_numpy(b))
    assert ha[:4] == hb[:4] and all(x != y for x, y in zip(ha[4:], hb[4:], strict=True))


def test_salt_and_dtype_separate_otherwise_equal_inputs():
    a = rows(0, 4)
    assert chain_hashes("s", tensor_from_numpy(a)) != chain_hashes("t", tensor_from_numpy(a))
    assert chain_hashes("s", tensor_from_numpy(a)) != chain_hashes("s", tensor_from_numpy(a.astype("float16")))


def test_it_finds_the_longest_shared_prefix_and_never_the_whole_prompt():
    store = PrefixStore(1000)
    system = rows(1, 10)
    store.add(prefix("s", np.concatenate([system, rows(2, 5)], axis=1)))
    store.add(prefix("s", np.concatenate([system, rows(3, 3)], axis=1)))
    new = np.concatenate([system, rows(2, 5)[:, :2], rows(4, 3)], axis=1)  # 12 rows shared with the first
    entry, n = store.longest(chain_hashes("s", tensor_from_numpy(new)), new.shape[1] - 1)
    assert n == 12 and entry.tokens == 15
    again = prefix("s", np.concatenate([system, rows(3, 3)], axis=1))
    assert store.longest(again.hashes, again.tokens - 1)[1] == 12  # the whole prompt is never reused
    assert store.longest(chain_hashes("other", tensor_from_numpy(new)), 14) is None
    assert store.longest(chain_hashes("s", tensor_from_numpy(rows(5, 6))), 5) is None
    assert (store.hits, store.reused_tokens) == (2, 24)


def test_it_keeps_within_its_budget_dropping_the_least_recently_used():
    store = PrefixStore(20)
    first, second, third = (prefix("s", rows(i, 8)) for i in range(3))
    store.add(first)
    store.add(second)
    assert store.longest(first.hashes, 7) is not None  # first is now the most recently used
    store.add(third)  # 24 > 20: second goes
    assert len(store) == 2 and store.tokens == 16
    assert store.longest(second.hashes, 7) is None
    assert store.longest(first.hashes, 7)[1] == 7 and store.longest(third.hashes, 7)[1] == 7
    store.add(prefix("s", rows(9, 30)))  # larger than the whole budget: not kept
    assert store.tokens == 16
    store.add(first)  # the same prompt again: kept once
    assert len(store) == 2 and store.tokens == 16


def test_a_chain_continued_step_by_step_equals_hashing_all_rows_at_once():
    x = rows(6, 9)
    whole = chain_hashes("s", tensor_from_numpy(x))
    parts = chain_hashes("s", tensor_from_numpy(x[:, :5]))
    for i in range(5, 9):
        parts += chain_hashes("s", tensor_from_numpy(x[:, i : i + 1]), after=parts[-1])
    assert parts == whole


def test_a_whole_session_replaces_the_entry_of_its_first_prompt():
    store = PrefixStore(100)
    session = rows(7, 14)
    store.add(prefix("s", session[:, :6]))  # its first prompt, kept at once
    store.add(prefix("s", rows(8, 4)))  # someone else's
    store.add(prefix("s", session))  # the whole session, kept when it closed
    assert len(store) == 2 and store.tokens == 18
    turn = np.concatenate([session, rows(9, 3)], axis=1)  # the next turn: the session so far, then more
    assert store.longest(chain_hashes("s", tensor_from_numpy(turn)), 16)[1] == 14


class RowScheduler:
    """Stands in for the scheduler: a step's output is twice its input, and its rows join the cache."""

    def __init__(self) -> None:
        self.computed = 0  # positions actually run

    async def step(self, hidden, cache, fresh=False):
        if fresh:
            cache.clear()
        x = hidden.to_numpy()
        cache.extend(x[0])
        self.computed += x.shape[1]
        return tensor_from_numpy(2 * x)


class RowBackend:
    """Caches are lists of input rows; a prefix's keys/values are the first rows."""

    def import_prefix(self, cache, kv, n):
        cache[:] = kv[:n]

    def export_prefix(self, cache, n):
        return list(cache[:n])


def tracker(max_tokens: int, sessions: dict) -> tuple[PrefixTracker, RowScheduler]:
    scheduler = RowScheduler()
    return PrefixTracker(scheduler, RowBackend(), PrefixStore(max_tokens), sessions), scheduler


def session(name: str, salt: str, sessions: dict) -> SessionState:
    state = SessionState(name, max_length=100, cache=[], owner=None, prefix_salt=salt)
    sessions[name] = state
    return state


def run_steps(prefixes: PrefixTracker, state: SessionState, steps: list[np.ndarray]) -> tuple[list, int]:
    async def go():
        outs, first = [], 0
        for i, x in enumerate(steps):
            out, cached = await prefixes.step(state, tensor_from_numpy(x))
            state.position += x.shape[1]
            outs.append(out.to_numpy())
            first = cached if i == 0 else first
        return outs, first

    return asyncio.run(go())


def test_a_tracker_reuses_a_first_prompt_of_the_same_salt_only():
    sessions = {}
    prefixes, scheduler = tracker(100, sessions)
    system = rows(10, 6)
    run_steps(prefixes, session("a", "salt", sessions), [np.concatenate([system, rows(11, 2)], 1)])
    scheduler.computed = 0
    again = np.concatenate([system, rows(12, 3)], 1)
    outs, cached = run_steps(prefixes, session("b", "salt", sessions), [again])
    assert (cached, scheduler.computed) == (6, 3)  # the system rows reused, the rest computed
    np.testing.assert_array_equal(outs[0], 2 * again)  # as if computed in full
    assert run_steps(prefixes, session("c", "other", sessions), [again])[1] == 0
    assert run_steps(prefixes, session("d", "", sessions), [again])[1] == 0  # no salt: no reuse


def test_a_closed_session_is_kept_whole_for_the_next_turn():
    sessions = {}
    prefixes, _ = tracker(100, sessions)
    turn = [rows(20, 5), rows(21, 1), rows(22, 1)]
    first = session("turn1", "salt", sessions)
    run_steps(prefixes, first, turn)
    prefixes.keep(first)
    assert (first.prefix_hashes, prefixes.tracked_rows) == (None, 0)
    conversation = np.concatenate([*turn, rows(23, 2)], 1)
    assert run_steps(prefixes, session("turn2", "salt", sessions), [conversation])[1] == 7


def test_sessions_together_track_at_most_four_times_the_store():
    sessions = {}
    prefixes, _ = tracker(10, sessions)
    states = [session(f"s{i}", "salt", sessions) for i in range(5)]
    for i, state in enumerate(states):
        run_steps(prefixes, state, [rows(30 + i, 10)])
    assert [s.prefix_hashes is not None for s in states] == [True] * 4 + [False]
    assert prefixes.tracked_rows == 40
    del sessions["s0"]  # dropped without a close: recounted when the limit nears
    run_steps(prefixes, session("s5", "salt", sessions), [rows(40, 10)])
    assert prefixes.tracked_rows == 40 and sessions["s5"].prefix_hashes is not None


def test_without_a_store_it_only_runs_steps():
    state = SessionState("s", max_length=100, cache=[], owner=None, prefix_salt="salt")
    prefixes = PrefixTracker(RowScheduler(), RowBackend(), None, {"s": state})
    outs, cached = run_steps(prefixes, state, [rows(50, 4), rows(51, 1)])
    assert cached == 0 and state.prefix_hashes is None and outs[1].shape == (1, 1, 8)
    prefixes.keep(state)  # closing keeps nothing, and does not fail
