"""The scheduler on hand-made outputs: batching, priorities, aging, chunked prompts."""

import asyncio
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from swarmnode.protocol import tensor_from_numpy
from swarmnode.runtime.scheduler import MachineLock, Scheduler, split_tokens


def hid(tokens, value=0.0, batch=1):
    return tensor_from_numpy(np.full((batch, tokens, 2), value, np.float32))


class Recorder:
    """A backend that records what it ran and echoes its input plus one."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls = []
        self.gate = gate

    def _out(self, h):
        return tensor_from_numpy(h.to_numpy() + 1)

    def step(self, h, cache):
        if self.gate:
            self.gate.wait(5)
        self.calls.append(("step", h.shape[1], cache))
        return self._out(h)

    def forward(self, h):
        self.calls.append(("forward", h.shape[1], None))
        return self._out(h)

    def step_batch(self, items):
        self.calls.append(("batch", len(items), [c for _, c in items]))
        return [self._out(h) for h, _ in items]


def run(coro):
    return asyncio.run(coro)


async def first_alone_then_the_rest(step, count: int, gap: float = 0.05):
    """Run ``step(0)`` first, by itself, and ``step(1..count-1)`` ``gap`` seconds later; wait for all."""
    first = asyncio.create_task(step(0))
    await asyncio.sleep(gap)
    await asyncio.gather(first, *(asyncio.create_task(step(i)) for i in range(1, count)))


def test_it_batches_decoding_steps_that_queue_up_together():
    gate = threading.Event()
    backend = Recorder(gate)

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), inline_s=0, max_batch=3)
        first = asyncio.create_task(sched.step(hid(1), "s0"))  # occupies the worker
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(sched.step(hid(1, i), f"s{i}")) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        gate.set()
        outs = await asyncio.gather(first, *rest)
        await sched.stop()
        return outs

    outs = run(main())
    assert [float(o.to_numpy()[0, 0, 0]) for o in outs] == [1, 2, 3, 4, 5, 6]
    batches = [c for c in backend.calls if c[0] == "batch"]
    assert [b[1] for b in batches] == [3, 2]  # five waiting steps, at most three per pass
    assert batches[0][2] == ["s1", "s2", "s3"]


async def queued_behind_a_busy_worker(sched, gate, make_jobs):
    """Start one step that holds the worker, queue ``make_jobs()`` meanwhile, then let everything run.

    (Schedulers here use ``inline_s=0``: a lone step run on the event loop would hold the loop, not the
    worker, and nothing could queue behind it.)"""
    busy = asyncio.create_task(sched.step(hid(1), "busy"))
    await asyncio.sleep(0.05)
    jobs = [asyncio.create_task(job) for job in make_jobs()]
    await asyncio.sleep(0.05)
    gate.set()
    outs = await asyncio.gather(busy, *jobs)
    await sched.stop()
    return outs[1:]


@pytest.mark.parametrize("pads", [True, False])
def test_first_prompts_that_queue_together_share_a_pass_when_the_backend_pads_them(pads):
    gate = threading.Event()
    backend = Recorder(gate)
    backend.batches_prompts = pads
    sched = Scheduler(backend, ThreadPoolExecutor(1), inline_s=0, max_batch=8, prefill_chunk=64)

    def jobs():
        return [
            *(sched.step(hid(t), f"p{t}", fresh=True) for t in (10, 12, 9)),
            sched.step(hid(11), "later"),  # not a first prompt: runs alone
            sched.step(hid(40), "long", fresh=True),  # 4 x 40 padded > 64 positions: alone
        ]

    outs = run(queued_behind_a_busy_worker(sched, gate, jobs))
    assert [o.shape[1] for o in outs] == [10, 12, 9, 11, 40]
    if pads:
        assert backend.calls[1] == ("batch", 3, ["p9", "p10", "p12"])  # shortest first, as one pass
        assert sorted(c[1] for c in backend.calls[2:]) == [11, 40]
    assert all(c[0] == "step" for c in backend.calls[2 if pads else 0 :])


def test_it_serves_decoding_before_prompts_and_forwards():
    gate = threading.Event()
    backend = Recorder(gate)

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), inline_s=0, max_batch=1)
        blocker = asyncio.create_task(sched.step(hid(1), "b"))
        await asyncio.sleep(0.05)
        jobs = [
            asyncio.create_task(sched.forward(hid(5))),
            asyncio.create_task(sched.step(hid(40), "p")),
            asyncio.create_task(sched.step(hid(9), "q")),
            asyncio.create_task(sched.step(hid(1), "d")),
        ]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(blocker, *jobs)
        await sched.stop()

    run(main())
    order = [(kind, n) for kind, n, _ in backend.calls[1:]]
    assert order == [("step", 1), ("step", 9), ("step", 40), ("forward", 5)]


def test_it_promotes_jobs_that_waited_too_long():
    gate = threading.Event()
    backend = Recorder(gate)

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), inline_s=0, max_batch=1, aging_s=0.01)
        blocker = asyncio.create_task(sched.step(hid(1), "b"))
        await asyncio.sleep(0.05)
        old = asyncio.create_task(sched.forward(hid(5)))
        await asyncio.sleep(0.05)  # the forward is now older than aging_s
        new = asyncio.create_task(sched.step(hid(1), "d"))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(blocker, old, new)
        await sched.stop()

    run(main())
    assert [kind for kind, _, _ in backend.calls[1:]] == ["forward", "step"]


def test_it_cuts_long_prompts_into_ordered_chunks():
    backend = Recorder()

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), prefill_chunk=4)
        arr = np.arange(2 * 10 * 2, dtype=np.float32).reshape(2, 10, 2)
        out = await sched.step(tensor_from_numpy(arr), "s")
        await sched.stop()
        return arr, out

    arr, out = run(main())
    assert [n for _, n, _ in backend.calls] == [4, 4, 2]
    np.testing.assert_array_equal(out.to_numpy(), arr + 1)


def test_it_gives_every_waiter_the_failure_and_keeps_going():
    class Failing(Recorder):
        def step_batch(self, items):
            raise RuntimeError("boom")

        def step(self, h, cache):
            if cache == "bad":
                raise RuntimeError("boom")
            return super().step(h, cache)

    async def main():
        sched = Scheduler(Failing(), ThreadPoolExecutor(1))
        with pytest.raises(RuntimeError):
            await sched.step(hid(1), "bad")
        ok = await sched.step(hid(1), "good")
        await sched.stop()
        return ok

    assert float(run(main()).to_numpy()[0, 0, 0]) == 1


def test_split_keeps_every_token():
    parts = split_tokens(hid(7, batch=2), 3)
    assert [p.shape for p in parts] == [(2, 3, 2), (2, 3, 2), (2, 1, 2)]


def test_it_waits_briefly_for_recently_active_sessions_to_share_a_pass():
    gate = threading.Event()
    gate.set()
    backend = Recorder(gate)

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), max_batch=4, batch_window=0.5)
        names = [f"s{i}" for i in range(3)]  # the same objects each step, as a node's caches are
        await asyncio.gather(*(sched.step(hid(1, i), names[i]) for i in range(3)))  # all three now active
        sched._inline_est = 1e-4  # lone steps are known to be short: one arriving alone could run at once
        backend.calls.clear()
        await first_alone_then_the_rest(lambda i: sched.step(hid(1, i), names[i]), 3)
        await sched.stop()

    run(main())
    assert [(c[0], c[1]) for c in backend.calls] == [("batch", 3)]  # one pass, not a lone one and a pair


def test_it_never_waits_for_a_lone_session_or_with_no_window():
    gate = threading.Event()
    gate.set()
    for window, sessions in ((0.5, 1), (0.0, 3)):
        backend = Recorder(gate)

        async def main(window=window, sessions=sessions, backend=backend):
            sched = Scheduler(backend, ThreadPoolExecutor(1), max_batch=4, batch_window=window)
            names = [f"s{i}" for i in range(sessions)]
            await asyncio.gather(*(sched.step(hid(1, i), names[i]) for i in range(sessions)))
            began = time.monotonic()
            await sched.step(hid(1), names[0])
            waited = time.monotonic() - began
            await sched.stop()
            return waited

        assert run(main()) < 0.25


async def time_one_step(sched, cache):
    """Seconds a decoding step of ``cache`` takes to come back (then ``sched`` stops)."""
    began = time.monotonic()
    await sched.step(hid(1), cache)
    waited = time.monotonic() - began
    await sched.stop()
    return waited


def test_a_much_slower_session_is_not_waited_for():
    backend = Recorder()

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), max_batch=4, batch_window=0.5)
        for _ in range(2):  # "slow" is active, and its pace says its next step is ~1 s away
            await sched.step(hid(1), "slow")
            await asyncio.sleep(0.3)
        await sched.step(hid(1), "fast")
        await sched.step(hid(1), "fast")  # "slow" decoded 0.3 s ago but is not due before the window ends
        return await time_one_step(sched, "fast")

    assert run(main()) < 0.25


@pytest.mark.parametrize("paused", ["decoding", "after its prompt"])
def test_a_session_that_paused_is_not_waited_for(paused):
    """A chat that stopped (its user is typing) is not a session running late: others do not wait."""
    backend = Recorder()
    backend.batches_prompts = True

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), max_batch=4, batch_window=0.5)
        if paused == "decoding":
            for _ in range(3):  # a pace of ~50 ms, then nothing for 4 paces
                await sched.step(hid(1), "chat")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.15)
        else:
            await sched.step(hid(8), "chat", fresh=True)
            await asyncio.sleep(0.6)
        return await time_one_step(sched, "other")

    assert run(main()) < 0.25


class Timed(Recorder):
    """A backend that takes 50 ms a pass and notes when each pass ran."""

    def __init__(self, spans):
        super().__init__()
        self.spans = spans

    def _timed(self, fn):
        began = time.monotonic()
        time.sleep(0.05)
        out = fn()
        self.spans.append((began, time.monotonic()))
        return out

    def step(self, h, cache):
        return self._timed(lambda: super(Timed, self).step(h, cache))

    def step_batch(self, items):
        return self._timed(lambda: super(Timed, self).step_batch(items))


def test_nodes_sharing_a_machine_lock_take_turns_and_batch_what_queued_meanwhile(tmp_path):
    lock = str(tmp_path / "machine.lock")
    spans = []
    a, b = Timed(spans), Timed(spans)

    async def main():
        # Two nodes in one event loop here: a step run on the loop itself would stall the other node.
        one = Scheduler(a, ThreadPoolExecutor(1), max_batch=8, machine_lock=lock, inline_s=0)
        two = Scheduler(b, ThreadPoolExecutor(1), max_batch=8, machine_lock=lock, inline_s=0)
        jobs = [one.step(hid(1), f"a{i}") for i in range(3)] + [two.step(hid(1), f"b{i}") for i in range(3)]
        await asyncio.gather(*jobs)
        late = []
        for i in range(4):  # arrive one by one while the other node holds the machine
            late.append(asyncio.create_task(two.step(hid(1), f"c{i}")))
            late.append(asyncio.create_task(one.step(hid(1), f"d{i}")))
            await asyncio.sleep(0.01)
        await asyncio.gather(*late)
        await one.stop()
        await two.stop()

    run(main())
    spans.sort()
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False))  # never two at once
    sizes = [c[1] if c[0] == "batch" else 1 for c in a.calls + b.calls]
    assert sum(sizes) == 14 and len(sizes) <= 6  # 14 steps in a few passes, not 14 passes


def test_a_machine_lock_held_by_another_process_is_refused_until_it_lets_go(tmp_path):
    path = str(tmp_path / "machine.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        mine = MachineLock(path)
        assert not mine.try_acquire()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        assert mine.try_acquire()
        assert not MachineLock(path).try_acquire()  # a second node in this process waits too
        mine.release()
        mine.acquire()  # the blocking way, now free
        mine.release()
    finally:
        holder.kill()
        holder.wait()


HOLDER = """
import sys
from swarmnode.runtime.scheduler import MachineLock
lock = MachineLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""


def test_a_first_prompt_waits_briefly_for_sessions_just_opened_to_share_its_pass():
    gate = threading.Event()
    gate.set()
    backend = Recorder(gate)
    backend.batches_prompts = True

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), max_batch=8, prefill_chunk=64, batch_window=0.5)
        names = [f"p{i}" for i in range(3)]
        for name in names:
            sched.opened(name)
        await first_alone_then_the_rest(lambda i: sched.step(hid((9, 11, 12)[i]), names[i], fresh=True), 3)
        together = list(backend.calls)
        backend.calls.clear()
        began = time.monotonic()  # every opened session has sent its prompt: nobody is waited for
        await sched.step(hid(8), "r", fresh=True)
        waited = time.monotonic() - began
        await sched.stop()
        return together, waited

    together, waited = run(main())
    assert together == [("batch", 3, ["p0", "p1", "p2"])]  # one pass, not one prompt and then two
    assert waited < 0.25
    assert [(c[0], c[1]) for c in backend.calls] == [("step", 8)]


def test_sessions_that_just_sent_their_first_prompt_are_waited_for_at_their_first_decoding_step():
    """Sessions started together make one batch from their very first decoding step: the prompt's
    pass says nothing about a session's pace, so it counts as due."""
    gate = threading.Event()
    gate.set()
    backend = Recorder(gate)

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), max_batch=8, batch_window=0.5)
        names = [f"s{i}" for i in range(3)]
        await asyncio.gather(*(sched.step(hid(6), name, fresh=True) for name in names))
        backend.calls.clear()
        await first_alone_then_the_rest(lambda i: sched.step(hid(1), names[i]), 3)  # first decoding steps
        await sched.stop()

    run(main())
    assert [(c[0], c[1]) for c in backend.calls] == [("batch", 3)]


def test_short_first_steps_of_sessions_opened_together_share_a_pass():
    """A first prompt whose prefix a node reused leaves a step of a position or two (a decoding-sized
    step): sessions opened together still start as one batch instead of the first one running alone
    and the rest catching up for rounds. A session opened alone does not wait for anyone."""
    gate = threading.Event()
    gate.set()
    backend = Recorder(gate)

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), max_batch=8, batch_window=0.5)
        names = [f"o{i}" for i in range(3)]
        for name in names:
            sched.opened(name)
        await first_alone_then_the_rest(lambda i: sched.step(hid(1), names[i]), 3)
        together = list(backend.calls)
        backend.calls.clear()
        await asyncio.sleep(0.6)  # the three are no longer due
        sched.opened("alone")
        began = time.monotonic()
        await sched.step(hid(1), "alone")
        waited = time.monotonic() - began
        await sched.stop()
        return together, waited

    together, waited = run(main())
    assert together == [("batch", 3, ["o0", "o1", "o2"])]
    assert waited < 0.25


def test_first_prompts_do_not_wait_without_a_window():
    backend = Recorder()
    backend.batches_prompts = True

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1), max_batch=8, prefill_chunk=64, batch_window=0.0)
        sched.opened("other")
        began = time.monotonic()
        await sched.step(hid(9), "p", fresh=True)
        await sched.stop()
        return time.monotonic() - began

    assert run(main()) < 0.25


class Where(Recorder):
    """Notes which thread ran each step."""

    def __init__(self):
        super().__init__()
        self.threads = []

    def step(self, h, cache):
        self.threads.append(threading.current_thread().name)
        return super().step(h, cache)


def test_a_lone_decoding_step_runs_on_the_event_loop_unless_the_backend_is_busy_elsewhere():
    backend = Where()

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1, thread_name_prefix="compute"))
        await sched.step(hid(1), "s")  # the first lone step is timed on the executor...
        await sched.step(hid(1), "s")  # ...and as it is short, the next one runs right here
        await sched.step(hid(8), "s")  # a prompt chunk: on the executor
        outside = asyncio.create_task(sched.run_exclusive(time.sleep, 0.2))  # other backend work running
        await asyncio.sleep(0.05)
        await sched.step(hid(1), "s")  # so this one waits its turn on the executor
        await outside
        await sched.stop()
        off = Scheduler(backend, ThreadPoolExecutor(1, thread_name_prefix="compute"), inline_s=0)
        for _ in range(2):
            await off.step(hid(1), "t")
        await off.stop()

    run(main())
    here = threading.current_thread().name
    assert [t == here for t in backend.threads] == [False, True, False, False, False, False]


def test_a_lone_step_with_nobody_else_due_runs_in_its_own_task_without_the_worker():
    backend = Where()

    async def main():
        sched = Scheduler(backend, ThreadPoolExecutor(1, thread_name_prefix="compute"), batch_window=0.5)
        await sched.step(hid(1), "s")  # timed on the executor, through the worker
        taken = []
        take = sched._queue.take
        sched._queue.take = lambda: taken.append(1) or take()
        out = await sched.step(hid(1, 2.0), "s")  # alone and nobody else due: computed right here
        await sched.stop()
        return taken, out

    taken, out = run(main())
    assert taken == []
    assert np.array_equal(out.to_numpy(), hid(1, 3.0).to_numpy())
    assert backend.threads[1] == threading.current_thread().name
