"""Compute jobs waiting for the scheduler's worker, and how queued jobs form one batched pass.

Classes: decoding steps, then prompt (prefill) chunks, then cache-less forwards; shorter jobs
first within a class; a job that waited longer than ``aging_s`` is promoted ahead of every
class (oldest first) so nothing starves.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from swarmnode.protocol import WireTensor

DECODE, PREFILL, FORWARD = 0, 1, 2


@dataclass
class Job:
    """One unit of compute waiting for the worker."""

    kind: int  # DECODE, PREFILL or FORWARD
    hidden: WireTensor
    cache: Any  # for FORWARD: None, or its rows' lengths (an encoder's padded batch)
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


class JobQueue:
    """Jobs waiting for the worker, in arrival order, and the policy that forms batches from them.

    Args:
        max_batch: most jobs in one pass (1: the backend runs one at a time).
        batches_prompts: first prompts of fresh sessions may share one padded pass (the backend pads them).
        prefill_chunk: most positions in a padded pass of first prompts.
        aging_s: after this long in the queue a job is served as if it were decoding.
    """

    def __init__(self, max_batch: int, batches_prompts: bool, prefill_chunk: int, aging_s: float) -> None:
        self.max_batch = max_batch
        self.batches_prompts = batches_prompts
        self.prefill_chunk = prefill_chunk
        self.aging_s = aging_s
        self.jobs: list[Job] = []

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def push(self, job: Job) -> None:
        """Queue ``job``."""
        self.jobs.append(job)

    def cancel_all(self) -> None:
        """Cancel every queued job's future and empty the queue."""
        for job in self.jobs:
            job.future.cancel()
        self.jobs.clear()

    def grows(self, first: Job) -> bool:
        """Whether a batch led by ``first`` may take other queued jobs."""
        return (first.kind == DECODE or first.fresh) and self.max_batch > 1

    def take(self) -> list[Job]:
        """Remove the most urgent job, with every queued job that can share its pass."""
        now = time.monotonic()
        self.jobs.sort(key=lambda j: j.key(now, self.aging_s))
        first = self.jobs.pop(0)
        batch = [first]
        if self.grows(first):
            self.join(batch)
        return batch

    def join(self, batch: list[Job]) -> None:
        """Move queued jobs that can share ``batch[0]``'s pass into ``batch`` (up to ``max_batch``; first
        prompts while the padded pass stays within ``prefill_chunk`` positions and at most half padding)."""
        first, rest = batch[0], []
        caches = {id(j.cache) for j in batch}
        longest, total = max(j.hidden.shape[1] for j in batch), sum(j.hidden.shape[1] for j in batch)
        for job in self.jobs:
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
        self.jobs = rest
