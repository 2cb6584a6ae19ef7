"""Failure bookkeeping for clients: bans with exponential backoff, a circuit breaker, adaptive timeouts.

Pure state machines over an injectable clock, so tests drive them without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FailoverPolicy:
    """How hard a session tries to survive failing nodes."""

    max_failovers: int = 8  # node failures one session survives before giving up
    wait_for_cover_s: float = 60.0  # how long to wait for a replacement when nobody serves a failed range
    rediscover_every_s: float = 0.5  # how often to ask the tracker / peers again while waiting
    ban_base_s: float = 2.0  # first ban; doubles with each consecutive failure
    ban_max_s: float = 120.0
    breaker_failures: int = 3  # this many failures within breaker_window_s ...
    breaker_window_s: float = 120.0
    breaker_open_s: float = 600.0  # ... keep a flapping node out for this long, successes or not
    first_step_timeout_s: float = 60.0  # before a node's step time is known (includes prefill)
    min_step_timeout_s: float = 2.0  # floor of the adaptive timeout
    step_timeout_factor: float = 8.0  # timeout = factor x smoothed step time (per token count class)
    replay: str = "exact"  # "exact": the original steps one by one (bit-identical caches); "prefill": one step

    def __post_init__(self) -> None:
        if self.replay not in ("exact", "prefill"):
            raise ValueError(f"replay must be 'exact' or 'prefill', got {self.replay!r}")
        if self.max_failovers < 0:
            raise ValueError("max_failovers must not be negative")


@dataclass
class _Record:
    consecutive: int = 0
    banned_until: float = 0.0
    failures: list[float] = field(default_factory=list)
    breaker_until: float = 0.0


class BanList:
    """Which nodes not to use right now, and how often each failed lately.

    A failure bans the node for ``ban_base_s * 2**(consecutive failures - 1)`` (capped at
    ``ban_max_s``); a success resets the consecutive count. ``breaker_failures`` failures within
    ``breaker_window_s`` open the node's circuit breaker: it stays banned for ``breaker_open_s``
    even if it answers in between (a flapping node).
    """

    def __init__(self, policy: FailoverPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or FailoverPolicy()
        self.clock = clock
        self._records: dict[str, _Record] = {}

    def failed(self, url: str) -> float:
        """Record a failure; return how many seconds the node is now banned for."""
        p, now = self.policy, self.clock()
        rec = self._records.setdefault(url, _Record())
        rec.consecutive += 1
        rec.failures = [t for t in rec.failures if now - t <= p.breaker_window_s] + [now]
        rec.banned_until = now + min(p.ban_max_s, p.ban_base_s * 2 ** (rec.consecutive - 1))
        if len(rec.failures) >= p.breaker_failures:
            rec.breaker_until = now + p.breaker_open_s
        return max(rec.banned_until, rec.breaker_until) - now

    def succeeded(self, url: str) -> None:
        """Record a success: the backoff starts over (an open circuit breaker stays open)."""
        rec = self._records.get(url)
        if rec is not None:
            rec.consecutive = 0

    def is_banned(self, url: str) -> bool:
        """Whether the node must not be chosen now."""
        rec = self._records.get(url)
        now = self.clock()
        return rec is not None and (now < rec.banned_until or now < rec.breaker_until)

    def banned(self) -> set[str]:
        """Every node banned now."""
        return {u for u in self._records if self.is_banned(u)}

    def recent_failures(self) -> dict[str, int]:
        """Failures within the breaker window per node (a routing penalty)."""
        now = self.clock()
        out = {}
        for url, rec in self._records.items():
            n = sum(1 for t in rec.failures if now - t <= self.policy.breaker_window_s)
            if n:
                out[url] = n
        return out


class StepTimer:
    """Adaptive per-node step timeouts from smoothed step times.

    Steps are classed by token count (1-token decoding steps vs larger ones, per power of two),
    since a prefill takes far longer than a decoding step.
    """

    def __init__(self, policy: FailoverPolicy | None = None, alpha: float = 0.2) -> None:
        self.policy = policy or FailoverPolicy()
        self.alpha = alpha
        self._ewma: dict[tuple[str, int], float] = {}

    @staticmethod
    def _klass(tokens: int) -> int:
        return max(0, tokens - 1).bit_length()

    def record(self, url: str, tokens: int, seconds: float) -> None:
        """Add one step's wall time."""
        key = (url, self._klass(tokens))
        old = self._ewma.get(key)
        self._ewma[key] = seconds if old is None else (1 - self.alpha) * old + self.alpha * seconds

    def timeout(self, url: str, tokens: int) -> float:
        """Seconds to wait for this node's reply to a step of ``tokens`` positions."""
        p = self.policy
        known = self._ewma.get((url, self._klass(tokens)))
        if known is None:
            return p.first_step_timeout_s
        return min(p.first_step_timeout_s, max(p.min_step_timeout_s, p.step_timeout_factor * known))
