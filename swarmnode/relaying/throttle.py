"""Token buckets: the relay's per-node and per-relay bandwidth and frame-rate limits (spec §9.6)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` units per second, bursts of up to ``burst`` units.

    :meth:`delay` says how long to wait before ``amount`` units may pass (and takes them), so a
    caller that sleeps that long before forwarding applies backpressure instead of buffering.

    Args:
        rate: units per second (``0`` or less: unlimited).
        burst: bucket size (default: one second's worth).
        clock: monotonic clock (injectable for tests).
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1.0))
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()

    @property
    def unlimited(self) -> bool:
        """True when the bucket never delays."""
        return self.rate <= 0

    def delay(self, amount: float) -> float:
        """Take ``amount`` units; return the seconds to wait before they may pass (0.0: at once).

        An ``amount`` bigger than the burst is allowed through after the bucket refills enough
        (it goes into debt), so one large frame is slowed, never refused.
        """
        if self.unlimited:
            return 0.0
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


async def throttle(*buckets_and_amounts: tuple[TokenBucket, float]) -> float:
    """Wait as long as the slowest of the buckets asks; return the seconds waited."""
    wait = max((bucket.delay(amount) for bucket, amount in buckets_and_amounts), default=0.0)
    if wait > 0:
        await asyncio.sleep(wait)
    return wait
