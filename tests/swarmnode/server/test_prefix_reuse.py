"""Prompt-prefix reuse (spec §4.9) on a real ONNX Runtime node: same salt shares, others never do."""

import numpy as np
import pytest
import torch

from swarmnode.client import RemoteError, RemoteSpan
from swarmnode.launcher import start_node
from swarmnode.models import Checkpoint, load_span
from swarmnode.models.wire import tensor_to_wire, wire_to_tensor
from swarmnode.protocol import CloseSession, OpenSession, Step, tensor_from_numpy
from swarmnode.runtime import TorchBackend

SYSTEM = np.random.default_rng(0).standard_normal((1, 10, 64)).astype(np.float32)


def prompt(seed: int, extra: int) -> np.ndarray:
    return np.concatenate([SYSTEM, np.random.default_rng(seed).standard_normal((1, extra, 64)).astype(np.float32)], 1)


@pytest.fixture(scope="module")
def onnx_node(tiny_models, tmp_path_factory):
    node = start_node(
        str(tiny_models["llama"]),
        "0:6",
        extra_args=["--backend", "onnxruntime", "--prefix-cache-tokens", "64"],
        log_path=tmp_path_factory.mktemp("prefix") / "n.log",
    )
    yield node
    node.process.kill()
    node.process.wait()


def run(url: str, name: str, salt: str, steps: list[np.ndarray], close: bool = False) -> tuple[list[np.ndarray], int]:
    """Open a session, run ``steps``; the outputs and how many prompt positions the node reused.
    ``close``: end with ``close_session`` (else the connection just drops)."""
    span = RemoteSpan(url)
    try:
        span.request(OpenSession(session_id=name, max_length=64, prefix_salt=salt))
        outs, position, cached = [], 0, 0
        for i, x in enumerate(steps):
            reply = span.request(Step(session_id=name, position=position, hidden=tensor_from_numpy(x)))
            cached = reply.cached_tokens if i == 0 else cached
            assert i == 0 or reply.cached_tokens == 0
            position = reply.position
            outs.append(reply.hidden.to_numpy())
        if close:
            span.request(CloseSession(session_id=name))
        return outs, cached
    finally:
        span.close()


def reference(tiny_models, steps: list[np.ndarray]) -> list[np.ndarray]:
    ref = TorchBackend(load_span(Checkpoint(tiny_models["llama"]), 0, 6))
    cache = ref.new_cache()
    return [wire_to_tensor(ref.step(tensor_to_wire(torch.from_numpy(x)), cache)).numpy() for x in steps]


def test_a_session_reuses_the_prompt_beginning_of_an_earlier_one_with_the_same_salt(onnx_node, tiny_models):
    token = np.random.default_rng(9).standard_normal((1, 1, 64)).astype(np.float32)
    _, cached = run(onnx_node.url, "first", "client-a", [prompt(1, 5), token])
    assert cached == 0
    steps = [prompt(2, 4), token, token]
    reused, cached = run(onnx_node.url, "second", "client-a", steps)
    assert cached == 10  # the shared system rows; the rest computed
    fresh, other = run(onnx_node.url, "third", "client-b", steps)  # another client: computed in full
    assert other == 0
    for got, again, expected in zip(reused, fresh, reference(tiny_models, steps), strict=True):
        np.testing.assert_allclose(got, again, atol=1e-5)  # reuse changes nothing beyond rounding
        np.testing.assert_allclose(got, expected, atol=1e-3 * max(1.0, np.abs(expected).max()))


def test_the_same_prompt_again_reuses_all_but_its_last_position(onnx_node):
    steps = [prompt(3, 6)]
    _, first = run(onnx_node.url, "p1", "client-c", steps)
    outs, again = run(onnx_node.url, "p2", "client-c", steps)
    assert (first, again) == (0, 15) and outs[0].shape == (1, 16, 64)


def test_no_salt_means_no_reuse(onnx_node):
    steps = [prompt(4, 3)]
    assert run(onnx_node.url, "n1", "", steps)[1] == 0
    assert run(onnx_node.url, "n2", "", steps)[1] == 0


def test_a_bit_exact_torch_node_never_reuses(tiny_node):
    steps = [prompt(5, 3)]
    assert run(tiny_node.url, "t1", "client-d", steps)[1] == 0
    assert run(tiny_node.url, "t2", "client-d", steps)[1] == 0


def test_an_overlong_salt_is_refused_clearly(onnx_node):
    span = RemoteSpan(onnx_node.url)
    try:
        with pytest.raises(RemoteError) as err:
            span.request(OpenSession(session_id="long", max_length=8, prefix_salt="x" * 129))
        assert err.value.code == "bad_field" and "prefix_salt" in err.value.message
    finally:
        span.close()


def test_the_next_turn_reuses_the_whole_closed_session_prompt_and_answer(onnx_node, tiny_models):
    """A chat's next turn sends the conversation so far: a session closed with ``close_session`` is
    kept whole (its first prompt and every step after it), so only the new rows are computed."""
    answer = [np.random.default_rng(20 + i).standard_normal((1, 1, 64)).astype(np.float32) for i in range(3)]
    first_turn = [prompt(11, 4), *answer]
    run(onnx_node.url, "turn1", "client-e", first_turn, close=True)
    conversation = np.concatenate([prompt(11, 4), *answer, np.ones((1, 2, 64), np.float32)], 1)
    steps = [conversation]
    reused, cached = run(onnx_node.url, "turn2", "client-e", steps)
    assert cached == 17  # 14 prompt rows and 3 answer rows; the 2 new rows computed
    fresh, other = run(onnx_node.url, "turn2-other", "client-f", steps)
    assert other == 0
    np.testing.assert_allclose(reused[0], fresh[0], atol=1e-5)
    expected = reference(tiny_models, steps)[0]
    np.testing.assert_allclose(reused[0], expected, atol=1e-3 * max(1.0, np.abs(expected).max()))


def test_a_dropped_session_is_not_kept_beyond_its_first_prompt(onnx_node):
    answer = [np.random.default_rng(30 + i).standard_normal((1, 1, 64)).astype(np.float32) for i in range(2)]
    run(onnx_node.url, "dropped", "client-g", [prompt(13, 3), *answer])  # no close_session
    conversation = np.concatenate([prompt(13, 3), *answer, np.ones((1, 1, 64), np.float32)], 1)
    assert run(onnx_node.url, "after-drop", "client-g", [conversation])[1] == 13  # the first prompt only


def test_sessions_together_track_at_most_four_times_the_store(onnx_node):
    """The node keeps the positions of open sessions for the store only up to 4 x --prefix-cache-tokens
    (64 here): the fifth 52-row session is not tracked, so closing it keeps nothing of it."""
    token = np.ones((1, 1, 64), np.float32)
    spans, names = [], [f"crowd{i}" for i in range(5)]
    try:
        for i, name in enumerate(names):
            span = RemoteSpan(onnx_node.url)
            spans.append(span)
            span.request(OpenSession(session_id=name, max_length=64, prefix_salt="client-h"))
            span.request(Step(session_id=name, position=0, hidden=tensor_from_numpy(prompt(40 + i, 42))))
            span.request(Step(session_id=name, position=52, hidden=tensor_from_numpy(token)))
        spans[3].request(CloseSession(session_id=names[3]))  # tracked: kept whole
        spans[4].request(CloseSession(session_id=names[4]))  # not tracked: nothing kept
    finally:
        for span in spans:
            span.close()
    follow = [np.concatenate([prompt(43, 42), token, token], 1)]
    assert run(onnx_node.url, "after-crowd-3", "client-h", follow)[1] == 53
    follow = [np.concatenate([prompt(44, 42), token, token], 1)]
    assert run(onnx_node.url, "after-crowd-4", "client-h", follow)[1] == 10  # the shared system rows only
