"""Checks against the node's context (spec §6): shapes, hidden size, limits, finite values."""

import numpy as np
import pytest

from swarmnode.protocol import Limits, OpenSession, ProtocolError, WireTensor, check_hidden, check_open_session
from swarmnode.protocol import tensor_from_numpy as tn


def _code(fn, *args) -> str:
    with pytest.raises(ProtocolError) as info:
        fn(*args)
    return info.value.code


def test_it_accepts_a_good_hidden_state():
    t = tn(np.ones((2, 3, 8), np.float32))
    assert check_hidden(t, 8, Limits()) is t


@pytest.mark.parametrize(
    "array, code",
    [
        (np.ones((3, 8), np.float32), "bad_shape"),
        (np.ones((1, 3, 9), np.float32), "wrong_hidden_size"),
        (np.ones((1, 0, 8), np.float32), "bad_shape"),
        (np.ones((1, 11, 8), np.float32), "too_many_tokens"),
        (np.ones((5, 1, 8), np.float32), "batch_too_large"),
        (np.array([[[np.nan] * 8]], np.float32), "not_finite"),
        (np.array([[[np.inf] * 8]], np.float16), "not_finite"),
    ],
)
def test_it_refuses_bad_hidden_states(array, code):
    assert _code(check_hidden, tn(array), 8, Limits(max_tokens_per_step=10, max_batch=4)) == code


def test_it_finds_nan_in_bfloat16_words():
    good = WireTensor("bfloat16", (1, 1, 2), np.array([0x3F80, 0x4000], "<u2").tobytes())  # 1.0, 2.0
    nan = WireTensor("bfloat16", (1, 1, 2), np.array([0x3F80, 0x7FC0], "<u2").tobytes())
    check_hidden(good, 2, Limits())
    assert _code(check_hidden, nan, 2, Limits()) == "not_finite"


def test_it_needs_a_tensor():
    assert _code(check_hidden, None, 8, Limits()) == "missing_tensor"


@pytest.mark.parametrize("sid, length", [("", 10), ("x" * 500, 10), ("s", 0), ("s", 10**9)])
def test_it_refuses_bad_session_requests(sid, length):
    assert _code(check_open_session, OpenSession(session_id=sid, max_length=length), Limits()) == "bad_field"
