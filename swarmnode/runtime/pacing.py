"""What the scheduler remembers of the sessions it served lately: each one's pace, and who shared a pass.

A decoding batch waits (up to the batch window) only for sessions whose next step is due: the
ones that decoded here within ``recent_s`` at a pace that brings them in by the deadline, the
ones that shared the batch's previous pass (sessions in lockstep), and, for a session's first
step, the sessions opened here moments ago whose first step has not come yet.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

from swarmnode.runtime.jobs import DECODE, Job


@dataclass
class Seen:
    """What the scheduler remembers of a session it served lately (or that opened here lately)."""

    at: float  # when its last step arrived (or when it opened)
    ref: weakref.ref | None  # its cache, weakly: a closed session is forgotten at once (None: kept until stale)
    pace: float | None = None  # smoothed time between its decoding steps (None: unknown yet)
    prompted: bool = False  # its last step was its first prompt (the next one says nothing about its pace)
    last_pass: int | None = None  # the pass its last step ran in


def weak(cache) -> weakref.ref | None:
    """A weak reference to a session's cache (a closed session is then forgotten at once), or None
    when it cannot have one (it is then remembered until ``recent_s`` passes)."""
    try:
        return weakref.ref(cache)
    except TypeError:
        return None


class Pacing:
    """Per-session bookkeeping for the batch window: who is active, at what pace, in which pass.

    Sessions are keyed by ``id(cache)``.

    Args:
        recent_s: a session that sent a decoding step this recently counts as active.
    """

    def __init__(self, recent_s: float) -> None:
        self.recent_s = recent_s
        # id(cache) -> sessions that sent a decoding step (or their first prompt) lately.
        self._recent: dict[int, Seen] = {}
        # id(cache) -> sessions opened here whose first prompt has not arrived yet (sessions that start
        # together send their prompts moments apart).
        self._opened: dict[int, Seen] = {}

    def opened(self, cache) -> None:
        """Note a session opened here (its first step is on its way)."""
        self._opened[id(cache)] = Seen(time.monotonic(), weak(cache))

    def arrived(self, job: Job) -> None:
        """Note ``job``'s arrival: mark a session's first step here (``opening``) and, for a decoding step
        or a first prompt, update its session's pace and tell the job which pass its previous step ran in."""
        cache, kind = job.cache, job.kind
        job.opening = self._opened.pop(id(cache), None) is not None
        if kind == DECODE or job.fresh:
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
                ref = weak(cache)
                # A session that just sent its first prompt decodes next (pace unknown: assumed due),
                # so sessions that started together make one batch from their first decoding step.
                self._recent[id(cache)] = Seen(job.enqueued, ref, prompted=kind != DECODE)

    def ran(self, batch: list[Job], pass_no: int) -> None:
        """Note the pass each session's step ran in: sessions that shared it are expected together next."""
        for job in batch:
            seen = self._recent.get(id(job.cache))
            if seen is not None:
                seen.last_pass = pass_no

    def expected(self, batch: list[Job], deadline: float) -> int:
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

    def expected_prompts(self, batch: list[Job]) -> int:
        """How many first prompts ``batch`` should hold: its own, plus every session opened here within
        ``recent_s`` whose first prompt has not arrived yet. Forgets the others."""
        self._opened = self._still_here(self._opened)
        inside = {id(j.cache) for j in batch}
        return len(batch) + sum(1 for k in self._opened if k not in inside)

    def _still_here(self, entries: dict[int, Seen]) -> dict[int, Seen]:
        """``entries`` without the sessions last seen over ``recent_s`` ago or closed since."""
        cutoff = time.monotonic() - self.recent_s
        return {k: v for k, v in entries.items() if v.at >= cutoff and (v.ref is None or v.ref() is not None)}
