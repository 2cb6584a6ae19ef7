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

This module holds the scheduler's API and its worker; the queue order and how batches form are in
:mod:`swarmnode.runtime.jobs`, each session's pace and who shared a pass in :mod:`swarmnode.runtime.pacing`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from concurrent.futures import Executor

from filelock import FileLock, Timeout

try:
    import fcntl
except ImportError:  # Windows: filelock's msvcrt locking
    fcntl = None

from swarmnode.protocol import WireTensor
from swarmnode.runtime.chunks import concat_tokens, slice_tokens, split_tokens
from swarmnode.runtime.jobs import DECODE, FORWARD, PREFILL, Job, JobQueue
from swarmnode.runtime.pacing import Pacing

log = logging.getLogger("swarmnode.scheduler")

# The token helpers stay importable from here (swarmnode.server.node imports them from this module).
__all__ = ["Job", "MachineLock", "Scheduler", "concat_tokens", "slice_tokens", "split_tokens"]


class MachineLock:
    """The file that nodes sharing one machine lock around each pass, so they take turns on its cores.

    On POSIX an ``flock`` on a descriptor opened once: taking and releasing it is two system calls
    (~5 us). ``filelock`` re-opens the file and checks its path in Python on every acquire, ~0.3-0.7 ms
    per pass here, paid by every hop of every decoding step. Elsewhere (Windows) a ``filelock`` lock.
    It is taken on the executor thread and may be released from the event loop's, so the hold is not
    tied to one thread; within the process a plain lock keeps it to one holder at a time.

    Args:
        path: the lock file (created if missing).
    """

    def __init__(self, path: str) -> None:
        self._held = threading.Lock()  # one holder in this process (flock alone is per descriptor)
        if fcntl is None:
            self._lock = FileLock(path, thread_local=False)
            self._fd = -1
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self) -> None:
        """Wait for the machine (blocks: call it on the executor thread)."""
        self._held.acquire()
        try:
            if self._fd < 0:
                self._lock.acquire()
            else:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._held.release()
            raise

    def try_acquire(self) -> bool:
        """Take the machine if it is free at once; False if another node holds it."""
        if not self._held.acquire(blocking=False):
            return False
        try:
            if self._fd < 0:
                self._lock.acquire(blocking=False)
            else:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (Timeout, BlockingIOError):
            self._held.release()
            return False
        except BaseException:
            self._held.release()
            raise
        return True

    def release(self) -> None:
        """Hand the machine back."""
        try:
            if self._fd < 0:
                self._lock.release()
            else:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._held.release()


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
        self._lock = MachineLock(machine_lock) if machine_lock else None
        self.executor = executor
        self.max_batch = max_batch if hasattr(backend, "step_batch") else 1
        # Whether step_batch takes first prompts of different lengths (it pads them).
        self.batches_prompts = bool(getattr(backend, "batches_prompts", False))
        self.small_step_tokens = small_step_tokens
        self.prefill_chunk = prefill_chunk
        self.batch_window = batch_window
        self._pacing = Pacing(recent_s)
        self._queue = JobQueue(self.max_batch, self.batches_prompts, prefill_chunk, aging_s)
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
        self.on_batch = None  # called with each pass's jobs before it runs (the node's metrics)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for the worker."""
        return len(self._queue.jobs)

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; queued jobs fail with CancelledError."""
        if self._worker:
            self._worker.cancel()
            self._worker = None
        self._queue.cancel_all()

    def opened(self, cache) -> None:
        """Note a session opened here: while its first prompt is due, other first prompts may wait for
        it (up to ``batch_window``) to share a padded pass."""
        self._pacing.opened(cache)

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

    async def forward(self, hidden: WireTensor, lengths: tuple[int, ...] = ()) -> WireTensor:
        """Run a cache-less forward (``lengths``: each row's real positions, for an encoder's padded batch)."""
        return await self._submit(FORWARD, hidden, lengths or None)  # a forward's cache slot holds its lengths

    async def run_exclusive(self, fn, *args):
        """Run other backend work (e.g. a throughput measurement) on the executor; no step runs on the
        event loop meanwhile, so the backend is never used from two threads at once."""
        self._outside += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self._outside -= 1

    async def _submit(self, kind: int, hidden: WireTensor, cache, fresh: bool = False) -> WireTensor:
        self.start()
        future = asyncio.get_running_loop().create_future()
        job = Job(kind, hidden, cache, future, next(self._seq), fresh=fresh)
        self._pacing.arrived(job)
        if kind == DECODE and self._alone(job) and self._try_inline([job]):
            return await job.future  # done already: no trip through the worker
        self._queue.push(job)
        self._wake.set()
        return await job.future

    def _alone(self, job: Job) -> bool:
        """Whether a decoding step can run at once by itself: the worker idle, nothing queued, and no
        other session's step due within the batch window (so the worker would run it alone anyway)."""
        if self._serving or self._queue or self.inline_s <= 0:
            return False
        if self.batch_window <= 0 or self.max_batch <= 1:
            return True
        return self._pacing.expected([job], time.monotonic() + self.batch_window) <= 1

    # -- the worker: takes batches off the queue and runs them ---------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._queue.take()
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

    async def _fill(self, batch: list[Job]) -> None:
        """Wait up to ``batch_window`` for recently active sessions' next steps (or, for first prompts,
        the prompts of sessions just opened) to join ``batch``."""
        deadline = time.monotonic() + self.batch_window
        while True:
            self._wake.clear()  # then join what is queued: no arrival can slip in between (one loop)
            self._queue.join(batch)
            left = deadline - time.monotonic()
            if batch[0].kind == DECODE:
                expected = self._pacing.expected(batch, deadline)
            else:
                expected = self._pacing.expected_prompts(batch)
            if len(batch) >= min(self.max_batch, expected) or left <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    async def _serve(self, loop, batch: list[Job]) -> None:
        """Fill ``batch`` (batch window), wait for the machine (lock), run it."""
        prompts = batch[0].fresh and self.batches_prompts
        if (batch[0].kind == DECODE or prompts) and self.batch_window > 0 and self.max_batch > 1:
            await self._fill(batch)
        lone = len(batch) == 1 and batch[0].kind == DECODE and not self._queue
        if lone and self.inline_s > 0 and self._try_inline(batch):
            return
        if self._lock is None:
            await self._run_batch(loop, batch, self._compute)
        elif not self._queue:  # nothing else waiting here: lock, run and unlock in one trip to the thread
            await self._run_batch(loop, batch, self._locked_compute)
        else:  # wait for our turn on the machine; steps that queue meanwhile join the batch
            await loop.run_in_executor(self.executor, self._lock.acquire)
            try:
                if self._queue.grows(batch[0]):
                    self._queue.join(batch)
                await self._run_batch(loop, batch, self._compute)
            finally:
                self._lock.release()

    def _try_inline(self, batch: list[Job]) -> bool:
        """Run a lone decoding step right here on the event loop when the machine is free at once and
        such steps are short (skips two thread hand-offs); False to take the usual way."""
        if self._inline_est is None or self._inline_est > self.inline_s or self._outside:
            return False
        if self._lock is not None and not self._lock.try_acquire():
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
            if self._lock is not None:
                self._lock.release()
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, 1)
        if self.on_batch is not None:
            self.on_batch(batch)
        self._pacing.ran(batch, self.batches_run)
        job.future.set_result(result)
        return True

    async def _run_batch(self, loop, batch: list[Job], compute) -> None:
        batch = [j for j in batch if not j.future.cancelled()]
        if not batch:
            return
        self.batches_run += 1
        pass_no = self.batches_run
        self.largest_batch = max(self.largest_batch, len(batch))
        if self.on_batch is not None:
            self.on_batch(batch)
        try:
            results = await loop.run_in_executor(self.executor, compute, batch)
        except Exception as exc:  # each waiter gets the failure; the worker keeps going
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self._pacing.ran(batch, pass_no)
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)

    # -- on the executor thread (or, for a lone short step, the event loop) ---------------------

    def _compute(self, batch: list[Job]) -> list[WireTensor]:
        if len(batch) > 1:
            return self.backend.step_batch([(j.hidden, j.cache) for j in batch])
        job = batch[0]
        if job.kind == FORWARD:
            return [self.backend.forward(job.hidden, job.cache) if job.cache else self.backend.forward(job.hidden)]
        began = time.perf_counter()
        out = self.backend.step(job.hidden, job.cache)
        if job.kind == DECODE:  # how long a lone step holds whichever thread runs it (see _try_inline)
            took = time.perf_counter() - began
            self._inline_est = took if self._inline_est is None else 0.8 * self._inline_est + 0.2 * took
        return [out]

    def _locked_compute(self, batch: list[Job]) -> list[WireTensor]:
        self._lock.acquire()
        try:
            return self._compute(batch)
        finally:
            self._lock.release()
