"""Batching one-row requests of concurrent generations in one process (the client's LM head)."""

from __future__ import annotations

import contextlib
import threading
import time

import torch


class Participant:
    """One generation's membership in :class:`RowBatcher` s: its pace (time between its rows)."""

    def __init__(self) -> None:
        self.last = 0.0
        self.pace: float | None = None

    first_wait = 0.02  # a first row (pace unknown): generations started together send theirs moments apart

    def arrived(self) -> float:
        """Note a row now; how long a batch led by it may wait for the others (half its pace)."""
        now = time.monotonic()
        if self.last:
            gap = now - self.last
            self.pace = gap if self.pace is None else 0.7 * self.pace + 0.3 * gap
        self.last = now
        return 0.5 * self.pace if self.pace is not None else self.first_wait


class RowBatcher:
    """Run one-row requests from many threads as one batched call (leader/follower).

    The first caller to find the batcher idle becomes the leader: it runs everything queued so
    far in one call, until its own row is done, then promotes a waiting caller to lead the
    rest. Callers that registered as :meth:`participant` (concurrent generations) are waited
    for, up to half the leader's own time between two rows (at most ``gather_s``): groups of
    sessions that drifted apart merge within a round and then move in lockstep (one batch at
    every node and here), while a much slower session holds the others back by at most half
    their pace. A participant that has sent no row yet (still on its prompt) is waited for only
    by other first rows, up to ``Participant.first_wait``: generations started together have
    their first logits computed together. A lone caller runs at once.
    """

    def __init__(self, fn, gather_s: float = 0.15) -> None:
        self.fn = fn
        self.gather_s = gather_s
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._pending: list[dict] = []
        self._busy = False
        self._members: set[Participant] = set()  # registered participants
        self.largest_batch = 0

    @property
    def active(self) -> int:
        """Registered participants."""
        return len(self._members)

    @contextlib.contextmanager
    def participant(self, member: Participant | None = None):
        """Register a caller that will send a row about every step while the block runs."""
        member = member or Participant()
        with self._lock:
            self._members.add(member)
        try:
            yield member
        finally:
            with self._lock:
                self._members.discard(member)
                self._arrived.notify_all()

    def _awaited(self, first: bool) -> int:
        """Rows a batch waits for: every participant's for a first row, else those already sending."""
        return len(self._members) if first else sum(1 for m in self._members if m.last)

    def __call__(self, row: torch.Tensor, member: Participant | None = None) -> torch.Tensor:
        wait = member.arrived() if member is not None else 0.0
        first = member is not None and member.pace is None
        slot = {"row": row, "out": None, "error": None, "wake": threading.Event()}
        with self._lock:
            self._pending.append(slot)
            leader = not self._busy
            self._busy = True
            self._arrived.notify_all()
        if not leader:
            slot["wake"].wait()
            if slot["out"] is None and slot["error"] is None:  # promoted to lead
                leader = True
        while leader and slot["out"] is None and slot["error"] is None:
            with self._lock:
                deadline = time.monotonic() + min(self.gather_s, wait)
                while len(self._pending) < self._awaited(first) and (left := deadline - time.monotonic()) > 0:
                    self._arrived.wait(left)
                batch, self._pending = self._pending, []
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                out = self.fn(torch.cat([s["row"] for s in batch]))
                for i, s in enumerate(batch):
                    s["out"] = out[i : i + 1]
            except BaseException as exc:  # every caller of this batch sees the failure
                for s in batch:
                    s["error"] = exc
            for s in batch:
                if s is not slot:
                    s["wake"].set()
        if leader:
            with self._lock:
                if self._pending:
                    self._pending[0]["wake"].set()  # it leads the next batch
                else:
                    self._busy = False
        if slot["error"] is not None:
            raise slot["error"]
        return slot["out"]
