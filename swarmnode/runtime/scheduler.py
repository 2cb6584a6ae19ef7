"""Dynamic batching and priorities for a node's compute.

Requests wait in one priority queue; a single worker takes the most urgent job and, when it is
a decoding step, every other queued decoding step that can share its pass (same new-token
count, one sequence each, same wire dtype), up to ``max_batch``. Batches form from whatever
queued while the previous pass ran, so a lone session pays no batching delay, with one
exception: when other sessions decoded here within the last ``recent_s`` and their next step
is due (from each session's own pace), a decoding batch waits up to ``batch_window`` seconds
for them (and a session's first step, for the first steps of sessions opened here moments ago:
a first prompt, or what a reused prefix left of one, which is often decoding-sized).
Sessions moving through a chain of nodes in lockstep would otherwise split at every hop into
the one that arrived first and everyone else (two passes instead of one); slower sessions are
not waited for. Nodes sharing one machine can take turns on its cores
(``machine_lock``); a node waiting for its turn batches what queues meanwhile. A lone decoding
step with nothing queued, no other session's step due and the machine free runs on the event loop
itself, in the request's own task (``inline_s``), saving two thread hand-offs and a trip through the
worker a hop; everything else runs on the executor thread.

First prompts of fresh sessions that queue together share one padded pass where the backend
can do that (ONNX Runtime's fused graph), within ``prefill_chunk`` positions.

Classes: decoding steps, then prompt (prefill) chunks, then cache-less forwards; shorter jobs
first within a class; a job that waited longer than ``aging_s`` is promoted ahead of every
class (oldest first) so nothing starves. Long prompts are cut into chunks of
``prefill_chunk`` tokens so they cannot block everyone's decoding.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import time
import weakref
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from swarmnode.protocol import WireTensor

log = logging.getLogger("swarmnode.scheduler")

DECODE, PREFILL, FORWARD = 0, 1, 2


@dataclass
class Job:
    """One unit of compute waiting for the worker."""

    kind: int  # DECODE, PREFILL or FORWARD
    hidden: WireTensor
    cache: Any  # None for FORWARD
    future: asyncio.Future
    seq: int
    enqueued: float = field(default_factory=time.monotonic)
    fresh: bool = False  # the first piece of a session's first prompt (its cache is still empty)
    opening: bool = False  # its session's first step here (the session was opened here lately)
    prev_pass: int | None = None  # the pass its session's previous step ran in (None: none yet)

    @property
    def tokens(self) -> int:
        """Positions this job computes."""
        return self.hidden.shape[0] * self.hidden.shape[1]

    def key(self, now: float, aging_s: float) -> tuple:
        """Sort key: class, then size, then arrival; after ``aging_s`` a job goes ahead of every class."""
        if now - self.enqueued > aging_s:
            return (-1, 0, self.seq)
        return (self.kind, self.tokens, self.seq)

    def batchable_with(self, other: Job, prompts: bool = False) -> bool:
        """Whether both can run in one batched pass: decoding steps of one sequence with the same
        new-token count, or (``prompts``: the backend pads them) first prompts of fresh sessions."""
        if self.hidden.shape[0] != 1 or other.hidden.shape[0] != 1 or self.hidden.dtype != other.hidden.dtype:
            return False
        if self.kind == other.kind == DECODE:
            return self.hidden.shape[1] == other.hidden.shape[1]
        return prompts and self.kind == other.kind == PREFILL and self.fresh and other.fresh


@dataclass
class _Seen:
    """What the scheduler remembers of a session it served lately (or that opened here lately)."""

    at: float  # when its last step arrived (or when it opened)
    ref: weakref.ref | None  # its cache, weakly: a closed session is forgotten at once (None: kept until stale)
    pace: float | None = None  # smoothed time between its decoding steps (None: unknown yet)
    prompted: bool = False  # its last step was its first prompt (the next one says nothing about its pace)
    last_pass: int | None = None  # the pass its last step ran in


def _weak(cache) -> weakref.ref | None:
    """A weak reference to a session's cache (a closed session is then forgotten at once), or None
    when it cannot have one (it is then remembered until ``recent_s`` passes)."""
    try:
        return weakref.ref(cache)
    except TypeError:
        return None


def concat_tokens(parts: list[WireTensor]) -> WireTensor:
    """Join step outputs along the token axis (chunks of one prompt)."""
    if len(parts) == 1:
        return parts[0]
    b, _, h = parts[0].shape
    arrays = [p.to_numpy().reshape(b, -1, h) for p in parts]
    import numpy as np

    joined = np.ascontiguousarray(np.concatenate(arrays, axis=1))
    return WireTensor(parts[0].dtype, tuple(joined.shape), joined.tobytes())


def slice_tokens(hidden: WireTensor, start: int, end: int) -> WireTensor:
    """Positions ``start..end-1`` of a ``(B, T, H)`` tensor."""
    b, t, h = hidden.shape
    part = hidden.to_numpy().reshape(b, t, h)[:, start:end]
    return WireTensor(hidden.dtype, tuple(part.shape), part.copy().tobytes())


def split_tokens(hidden: WireTensor, chunk: int) -> list[WireTensor]:
    """Cut a ``(B, T, H)`` tensor into ``(B, <=chunk, H)`` pieces along T."""
    b, t, h = hidden.shape
    if t <= chunk:
        return [hidden]
    arr = hidden.to_numpy().reshape(b, t, h)
    pieces = []
    for start in range(0, t, chunk):
        part = arr[:, start : start + chunk]
        data = part.copy().tobytes()
        pieces.append(WireTensor(hidden.dtype, tuple(part.shape), data))
    return pieces


class Scheduler:
    """Queue compute jobs and run them on one executor thread, batching decoding steps.

    Args:
        backend: has ``step(hidden, cache)``, ``forward(hidden)`` and optionally
            ``step_batch([(hidden, cache), ...])``.
        executor: where compute runs (one thread: the backend is not re-entrant).
        max_batch: most decoding steps in one pass.
        small_step_tokens: a step of at most this many positions counts as decoding.
        prefill_chunk: longest piece a prompt is cut into.
        aging_s: after this long in the queue a job is served as if it were decoding.
        batch_window: longest wait for the next steps of recently active sessions (0: never wait).
        recent_s: a session that sent a decoding step this recently counts as active.
        machine_lock: a file that nodes sharing one machine lock around each pass, so they take
            turns on its cores instead of slowing each other down (every pass uses all cores).
            A node waiting for its turn keeps queueing, and then takes everything queued as one
            batch. ``None``: no lock (a node alone on its machine).
        inline_s: a lone decoding step, with nothing else queued and the machine free, runs on the
            event loop itself (no hand-off to the executor thread and back, ~0.2 ms a hop) while
            such steps are measured to take less than this (the first one runs on the executor to
            be timed); 0: never.
    """

    def __init__(
        self,
        backend,
        executor: Executor,
        max_batch: int = 16,
        small_step_tokens: int = 4,
        prefill_chunk: int = 512,
        aging_s: float = 0.5,
        batch_window: float = 0.0,
        recent_s: float = 1.0,
        machine_lock: str | None = None,
        inline_s: float = 0.02,
    ) -> None:
        self.backend = backend
        self._lock_fd = os.open(machine_lock, os.O_RDWR | os.O_CREAT, 0o600) if machine_lock else None
        self.executor = executor
        self.max_batch = max_batch if hasattr(backend, "step_batch") else 1
        # Whether step_batch takes first prompts of different lengths (it pads them).
        self.batches_prompts = bool(getattr(backend, "batches_prompts", False))
        self.small_step_tokens = small_step_tokens
        self.prefill_chunk = prefill_chunk
        self.aging_s = aging_s
        self.batch_window = batch_window
        self.recent_s = recent_s
        # id(cache) -> sessions that sent a decoding step (or their first prompt) lately.
        self._recent: dict[int, _Seen] = {}
        # id(cache) -> sessions opened here whose first prompt has not arrived yet (sessions that start
        # together send their prompts moments apart).
        self._opened: dict[int, _Seen] = {}
        self._queue: list[Job] = []
        self._wake = asyncio.Event()
        self._seq = itertools.count()
        self._worker: asyncio.Task | None = None
        self.batches_run = 0
        self.inline_s = inline_s
        # Smoothed time of a lone decoding step's pass (None: none timed yet, so none runs on the loop).
        self._inline_est: float | None = None
        self._outside = 0  # backend work running in the executor outside the queue (run_exclusive)
        self._serving = False  # the worker is filling or running a batch
        self.largest_batch = 0

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; queued jobs fail with CancelledError."""
        if self._worker:
            self._worker.cancel()
            self._worker = None
        for job in self._queue:
            job.future.cancel()
        self._queue.clear()

    def opened(self, cache) -> None:
        """Note a session opened here: while its first prompt is due, other first prompts may wait for
        it (up to ``batch_window``) to share a padded pass."""
        self._opened[id(cache)] = _Seen(time.monotonic(), _weak(cache))

    async def _submit(self, kind: int, hidden: WireTensor, cache, fresh: bool = False) -> WireTensor:
        self.start()
        opening = self._opened.pop(id(cache), None) is not None
        future = asyncio.get_running_loop().create_future()
        job = Job(kind, hidden, cache, future, next(self._seq), fresh=fresh, opening=opening)
        if kind == DECODE or fresh:
            seen = self._recent.get(id(cache))
            if kind == DECODE and seen is not None and (seen.ref is None or seen.ref() is cache):
                job.prev_pass = seen.last_pass
                if seen.prompted:  # its first decoding step: the prompt's pass says nothing about its pace
                    seen.prompted = False
                else:
                    gap = job.enqueued - seen.at
                    seen.pace = gap if seen.pace is None else 0.7 * seen.pace + 0.3 * gap
                seen.at = job.enqueued
            else:
                ref = _weak(cache)
                # A session that just sent its first prompt decodes next (pace unknown: assumed due),
                # so sessions that started together make one batch from their first decoding step.
                self._recent[id(cache)] = _Seen(job.enqueued, ref, prompted=kind != DECODE)
        if kind == DECODE and self._alone(job) and self._try_inline([job]):
            return await job.future  # done already: no trip through the worker
        self._queue.append(job)
        self._wake.set()
        return await job.future

    def _alone(self, job: Job) -> bool:
        """Whether a decoding step can run at once by itself: the worker idle, nothing queued, and no
        other session's step due within the batch window (so the worker would run it alone anyway)."""
        if self._serving or self._queue or self.inline_s <= 0:
            return False
        if self.batch_window <= 0 or self.max_batch <= 1:
            return True
        return self._expected([job], time.monotonic() + self.batch_window) <= 1

    async def step(self, hidden: WireTensor, cache, fresh: bool = False) -> WireTensor:
        """Run a session's step; long prompts go through in chunks, in order.

        ``fresh``: the session's cache is empty (its first prompt), so the first chunk may share a
        padded pass with other sessions' first prompts when the backend can do that.
        """
        if hidden.shape[0] * hidden.shape[1] <= self.small_step_tokens:
            return await self._submit(DECODE, hidden, cache)
        parts = []
        for i, piece in enumerate(split_tokens(hidden, self.prefill_chunk)):
            parts.append(await self._submit(PREFILL, piece, cache, fresh=fresh and i == 0))
        return concat_tokens(parts)

    async def forward(self, hidden: WireTensor) -> WireTensor:
        """Run a cache-less forward."""
        return await self._submit(FORWARD, hidden, None)

    def _take(self) -> list[Job]:
        now = time.monotonic()
        self._queue.sort(key=lambda j: j.key(now, self.aging_s))
        first = self._queue.pop(0)
        batch = [first]
        if (first.kind == DECODE or first.fresh) and self.max_batch > 1:
            self._join(batch)
        return batch

    def _join(self, batch: list[Job]) -> None:
        """Move queued jobs that can share ``batch[0]``'s pass into ``batch`` (up to ``max_batch``; first
        prompts while the padded pass stays within ``prefill_chunk`` positions and at most half padding)."""
        first, rest = batch[0], []
        caches = {id(j.cache) for j in batch}
        longest, total = max(j.hidden.shape[1] for j in batch), sum(j.hidden.shape[1] for j in batch)
        for job in self._queue:
            fits = len(batch) < self.max_batch and first.batchable_with(job, self.batches_prompts)
            if fits and first.kind == PREFILL:
                t = job.hidden.shape[1]
                padded = (len(batch) + 1) * max(longest, t)
                fits = padded <= self.prefill_chunk and 2 * (total + t) >= padded
            if fits and id(job.cache) not in caches:
                batch.append(job)
                caches.add(id(job.cache))
                longest, total = max(longest, job.hidden.shape[1]), total + job.hidden.shape[1]
            else:
                rest.append(job)
        self._queue = rest

    def _expected(self, batch: list[Job], deadline: float) -> int:
        """How many sessions ``batch`` should hold by ``deadline``: its own, plus every session that
        decoded (or sent its first prompt) here within ``recent_s`` and whose next step is due by
        then, from its own pace. A slower session is not waited for: it would only hold the others
        back; nor one long overdue (three paces late; unknown pace: half of ``recent_s`` since it was
        last seen), which has paused (a chat waiting for its user) rather than fallen behind.
        Forgets sessions that went quiet or closed."""
        now = time.monotonic()
        self._recent = self._still_here(self._recent)
        inside = {id(j.cache) for j in batch}
        mates = {j.prev_pass for j in batch if j.prev_pass is not None}
        due = 0
        if any(j.opening for j in batch):
            # A session's first step (a short prompt, or what a reused prefix left of one): sessions
            # opened with it whose first step has not come yet are on their way (they started together).
            self._opened = self._still_here(self._opened)
            due += sum(1 for k in self._opened if k not in inside)
        for k, seen in self._recent.items():
            if k in inside:
                continue
            t, pace = seen.at, seen.pace
            if seen.last_pass in mates and (pace is None or now - t <= 3 * pace):
                due += 1  # shared this batch's previous pass: sessions in lockstep come together
            elif pace is None:
                due += now - t <= self.recent_s / 2
            else:
                due += t + pace <= deadline and now - t <= 3 * pace
        return len(inside) + due

    def _still_here(self, entries: dict[int, _Seen]) -> dict[int, _Seen]:
        """``entries`` without the sessions last seen over ``recent_s`` ago or closed since."""
        cutoff = time.monotonic() - self.recent_s
        return {k: v for k, v in entries.items() if v.at >= cutoff and (v.ref is None or v.ref() is not None)}

    def _expected_prompts(self, batch: list[Job]) -> int:
        """How many first prompts ``batch`` should hold: its own, plus every session opened here within
        ``recent_s`` whose first prompt has not arrived yet. Forgets the others."""
        self._opened = self._still_here(self._opened)
        inside = {id(j.cache) for j in batch}
        return len(batch) + sum(1 for k in self._opened if k not in inside)

    async def _fill(self, batch: list[Job]) -> None:
        """Wait up to ``batch_window`` for recently active sessions' next steps (or, for first prompts,
        the prompts of sessions just opened) to join ``batch``."""
        deadline = time.monotonic() + self.batch_window
        while True:
            self._wake.clear()  # then join what is queued: no arrival can slip in between (one loop)
            self._join(batch)
            left = deadline - time.monotonic()
            expected = self._expected(batch, deadline) if batch[0].kind == DECODE else self._expected_prompts(batch)
            if len(batch) >= min(self.max_batch, expected) or left <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    def _compute(self, batch: list[Job]) -> list[WireTensor]:
        if len(batch) > 1:
            return self.backend.step_batch([(j.hidden, j.cache) for j in batch])
        job = batch[0]
        if job.kind == FORWARD:
            return [self.backend.forward(job.hidden)]
        began = time.perf_counter()
        out = self.backend.step(job.hidden, job.cache)
        if job.kind == DECODE:  # how long a lone step holds whichever thread runs it (see _try_inline)
            took = time.perf_counter() - began
            self._inline_est = took if self._inline_est is None else 0.8 * self._inline_est + 0.2 * took
        return [out]

    def _acquire(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            self._serving = True
            try:
                await self._serve(loop, batch)
            except Exception as exc:  # a bug here must fail this batch, never stop the worker (node hangs)
                log.exception("scheduler error")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                self._serving = False

    async def _serve(self, loop, batch: list[Job]) -> None:
        """Fill ``batch`` (batch window), wait for the machine (lock), run it."""
        prompts = batch[0].fresh and self.batches_prompts
        if (batch[0].kind == DECODE or prompts) and self.batch_window > 0 and self.max_batch > 1:
            await self._fill(batch)
        lone = len(batch) == 1 and batch[0].kind == DECODE and not self._queue
        if lone and self.inline_s > 0 and self._try_inline(batch):
            return
        if self._lock_fd is None:
            await self._run_batch(loop, batch, self._compute)
        elif not self._queue:  # nothing else waiting here: lock, run and unlock in one trip to the thread
            await self._run_batch(loop, batch, self._locked_compute)
        else:  # wait for our turn on the machine; steps that queue meanwhile join the batch
            await loop.run_in_executor(self.executor, self._acquire)
            try:
                if (batch[0].kind == DECODE or batch[0].fresh) and self.max_batch > 1:
                    self._join(batch)
                await self._run_batch(loop, batch, self._compute)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def run_exclusive(self, fn, *args):
        """Run other backend work (e.g. a throughput measurement) on the executor; no step runs on the
        event loop meanwhile, so the backend is never used from two threads at once."""
        self._outside += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self._outside -= 1

    def _try_inline(self, batch: list[Job]) -> bool:
        """Run a lone decoding step right here on the event loop when the machine is free at once and
        such steps are short (skips two thread hand-offs); False to take the usual way."""
        if self._inline_est is None or self._inline_est > self.inline_s or self._outside:
            return False
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        job = batch[0]
        if job.future.cancelled():
            return True
        try:
            result = self._compute(batch)[0]
        except Exception as exc:
            job.future.set_exception(exc)
            return True
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, 1)
        self._ran(batch, self.batches_run)
        job.future.set_result(result)
        return True

    def _ran(self, batch: list[Job], pass_no: int) -> None:
        """Note the pass each session's step ran in: sessions that shared it are expected together next."""
        for job in batch:
            seen = self._recent.get(id(job.cache))
            if seen is not None:
                seen.last_pass = pass_no

    def _locked_compute(self, batch: list[Job]) -> list[WireTensor]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            return self._compute(batch)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def _run_batch(self, loop, batch: list[Job], compute) -> None:
        batch = [j for j in batch if not j.future.cancelled()]
        if not batch:
            return
        self.batches_run += 1
        pass_no = self.batches_run
        self.largest_batch = max(self.largest_batch, len(batch))
        try:
            results = await loop.run_in_executor(self.executor, compute, batch)
        except Exception as exc:  # each waiter gets the failure; the worker keeps going
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self._ran(batch, pass_no)
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
