"""Round-trip times to nodes: measured with pings, smoothed, and forgotten when stale."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from swarmnode.client.remote import POOL, RemoteError, RemoteSpan
from swarmnode.discovery import PeerInfo


@dataclass
class _Sample:
    rtt_s: float
    at: float


class RttTable:
    """Exponentially smoothed RTT per node URL; entries older than ``ttl_s`` are dropped.

    Args:
        alpha: weight of a new sample (0..1].
        ttl_s: seconds after which an RTT no longer counts as known.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(self, alpha: float = 0.3, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.alpha = alpha
        self.ttl_s = ttl_s
        self.clock = clock
        self._samples: dict[str, _Sample] = {}

    def record(self, url: str, rtt_s: float) -> float:
        """Add a measurement; return the smoothed RTT."""
        now = self.clock()
        old = self._samples.get(url)
        if old is None or now - old.at > self.ttl_s:
            value = rtt_s
        else:
            value = (1 - self.alpha) * old.rtt_s + self.alpha * rtt_s
        self._samples[url] = _Sample(value, now)
        return value

    def get(self, url: str, default: float | None = None) -> float | None:
        """The smoothed RTT, or ``default`` if never measured or expired."""
        sample = self._samples.get(url)
        if sample is None or self.clock() - sample.at > self.ttl_s:
            return default
        return sample.rtt_s

    def snapshot(self) -> dict[str, float]:
        """Every RTT still fresh, for :func:`swarmnode.client.routing.route`."""
        now = self.clock()
        return {u: s.rtt_s for u, s in self._samples.items() if now - s.at <= self.ttl_s}

    def stale(self, urls: list[str]) -> list[str]:
        """Those of ``urls`` with no fresh RTT."""
        return [u for u in urls if self.get(u) is None]


def ping(url: str, timeout: float = 5.0, count: int = 2) -> tuple[PeerInfo, float]:
    """Connect, then time ``count`` Info round trips on the open connection; return the info and the best RTT.

    Raises:
        RemoteError: the node cannot be reached or does not answer.
    """

    def timed(span: RemoteSpan) -> tuple[PeerInfo, float]:
        best, info = float("inf"), None
        for _ in range(max(1, count)):
            started = time.perf_counter()
            info = span.info()
            best = min(best, time.perf_counter() - started)
        assert info is not None
        return info, best

    return POOL.use(url, timeout, timed)  # the connection stays open for a session about to start there


def ping_all(
    urls: list[str], table: RttTable, timeout: float = 5.0, workers: int = 8
) -> tuple[list[PeerInfo], dict[str, str]]:
    """Ping every URL in parallel, recording RTTs in ``table``; return the infos and the errors."""
    infos: list[PeerInfo] = []
    errors: dict[str, str] = {}
    if not urls:
        return infos, errors

    def one(url: str):
        try:
            return url, ping(url, timeout)
        except RemoteError as exc:
            return url, exc

    with ThreadPoolExecutor(min(workers, len(urls))) as pool:
        for url, result in pool.map(one, urls):
            if isinstance(result, RemoteError):
                errors[url] = str(result)
            else:
                info, rtt = result
                table.record(url, rtt)
                infos.append(info)
    return infos, errors
