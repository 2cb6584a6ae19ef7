"""The prefix store: longest shared prefix by chained input hashes, salts kept apart, LRU budget."""

import numpy as np

from swarmnode.protocol import tensor_from_numpy
from swarmnode.runtime.prefix import Prefix, PrefixStore, chain_hashes


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
