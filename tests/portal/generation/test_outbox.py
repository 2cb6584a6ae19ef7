"""A generation's replies leave its worker thread without waiting for the event loop, in order, merged only
while queued; a requester that stops reading (or a gateway that stops) cancels the generation. A real event
loop in its own thread and the real in-memory channel layer, as in the gateway."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from channels.layers import InMemoryChannelLayer

from portal.generation.outbox import Outbox
from portal.generation.streaming import Cancelled


@pytest.fixture
def loop():
    """An event loop running in a thread of its own (the gateway's loop, seen from a worker thread)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    if not loop.is_closed():

        async def cancel_the_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        _on(loop, cancel_the_rest())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _on(loop, coroutine, timeout: float = 5.0):
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


def _outbox(loop, layer, channel: str, timeout: float = 5.0) -> tuple[Outbox, threading.Event]:
    async def send(kind: str, **fields) -> None:
        await layer.send(channel, {"type": kind, "id": "r1", **fields})

    cancelled = threading.Event()
    return Outbox(loop, send, cancelled, timeout), cancelled


def _received(loop, layer, channel: str) -> list[dict]:
    async def drain() -> list[dict]:
        out = []
        while True:
            try:
                out.append(await asyncio.wait_for(layer.receive(channel), 0.2))
            except TimeoutError:
                return out

    return _on(loop, drain())


def _hold(loop) -> threading.Event:
    """Keep the loop busy (as with many websockets) until the returned event is set."""
    release, held = threading.Event(), threading.Event()

    def busy() -> None:
        held.set()
        release.wait(10)

    loop.call_soon_threadsafe(busy)
    assert held.wait(5)
    return release


def test_it_merges_the_tokens_queued_behind_a_busy_loop_and_keeps_the_order(loop):
    layer = InMemoryChannelLayer()
    outbox, cancelled = _outbox(loop, layer, "reply!1")
    outbox.emit("gateway.started", prompt_tokens=7, dropped_messages=0)  # returns once sent
    release = _hold(loop)
    for i, piece in enumerate(["The", " cap", "ital", " is", " Paris"]):
        started = time.monotonic()
        outbox.emit("gateway.token", text=piece, completion_tokens=i + 1)
        assert time.monotonic() - started < 1.0  # the worker thread never waits for the busy loop
    release.set()
    outbox.emit("gateway.done", text="The capital is Paris", finish_reason="stop")
    got = _received(loop, layer, "reply!1")
    assert [m["type"] for m in got] == ["gateway.started", "gateway.token", "gateway.done"]
    assert got[1]["text"] == "The capital is Paris" and got[1]["completion_tokens"] == 5
    assert not cancelled.is_set()


def test_it_sends_tokens_one_by_one_when_the_loop_keeps_up(loop):
    layer = InMemoryChannelLayer()
    outbox, _ = _outbox(loop, layer, "reply!2")
    for i, piece in enumerate(["a", "b", "c"]):
        outbox.emit("gateway.token", text=piece, completion_tokens=i + 1)
        outbox.drain()
    got = _received(loop, layer, "reply!2")
    assert [(m["text"], m["completion_tokens"]) for m in got] == [("a", 1), ("b", 2), ("c", 3)]
    assert outbox.sent == 3


def test_it_concatenates_the_logprobs_of_merged_tokens(loop):
    layer = InMemoryChannelLayer()
    outbox, _ = _outbox(loop, layer, "reply!3")
    release = _hold(loop)
    outbox.emit("gateway.token", text="Hi", completion_tokens=1, logprobs=[{"token": "Hi", "logprob": -0.1}])
    outbox.emit("gateway.token", text="", completion_tokens=2)  # half a character: no entry yet
    outbox.emit("gateway.token", text="!", completion_tokens=3, logprobs=[{"token": "!", "logprob": -0.2}])
    release.set()
    outbox.drain()
    (got,) = _received(loop, layer, "reply!3")
    assert got["text"] == "Hi!" and got["completion_tokens"] == 3
    assert [e["token"] for e in got["logprobs"]] == ["Hi", "!"]


def test_a_requester_that_stops_reading_cancels_the_generation(loop):
    layer = InMemoryChannelLayer(capacity=2)  # nobody reads the reply channel: it fills up
    outbox, cancelled = _outbox(loop, layer, "reply!4")
    with pytest.raises(Cancelled):
        for i in range(10):
            outbox.emit("gateway.token", text="x", completion_tokens=i + 1)
            outbox.drain()
    assert cancelled.is_set()
    with pytest.raises(Cancelled):  # nothing more goes out, and the worker hears it at once
        outbox.emit("gateway.token", text="y", completion_tokens=11)
    assert len(_received(loop, layer, "reply!4")) == 2


def test_a_send_that_hangs_cancels_after_the_timeout(loop):
    async def hang(kind: str, **fields) -> None:
        await asyncio.sleep(60)

    cancelled = threading.Event()
    outbox = Outbox(loop, hang, cancelled, timeout=0.2)
    with pytest.raises(Cancelled):
        outbox.emit("gateway.started", prompt_tokens=1, dropped_messages=0)
    assert cancelled.is_set()


def test_a_stopped_gateway_loop_cancels_the_generation(loop):
    layer = InMemoryChannelLayer()
    outbox, cancelled = _outbox(loop, layer, "reply!5")
    loop.call_soon_threadsafe(loop.stop)
    while loop.is_running():
        time.sleep(0.01)
    loop.close()
    with pytest.raises(Cancelled):
        outbox.emit("gateway.token", text="x", completion_tokens=1)
    assert cancelled.is_set()
