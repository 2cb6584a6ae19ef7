"""Failover of one session: replace failed hops by working nodes and rebuild their caches.

The session keeps, per hop, every input it has sent. When a node fails (disconnect, timeout, error
reply, output of the wrong shape or with NaN), :class:`Recovery` bans it, re-routes only the failed
block range, replays the kept inputs into the replacement nodes to rebuild their caches, and the
session carries on from the same position. With ``replay="exact"`` the replacement sees exactly the
steps the failed node saw, so its cache (and every later token) is bit-identical to an undisturbed
run. Bans, backoff and timeouts are the state machines of :mod:`swarmnode.client.failover`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from swarmnode.client.hop import HopSession, concat
from swarmnode.client.remote import RemoteError
from swarmnode.client.routing import Hop, SwarmNotCovering, route
from swarmnode.protocol import WireTensor

if TYPE_CHECKING:
    from swarmnode.client.session import InferenceSession

# Errors caused by what the client asked, not by the node: another node would answer the same.
CLIENT_ERRORS = frozenset(
    {"bad_field", "too_many_tokens", "batch_too_large", "wrong_hidden_size", "session_full", "bad_dtype", "bad_shape"}
)


class SessionFailed(RemoteError):
    """Failover gave up: too many failures, or nobody serves some blocks any more.

    Attributes:
        start, end: the block range that could not be served.
        uncovered: blocks no usable node serves (empty when the retry budget ran out instead).
    """

    def __init__(self, start: int, end: int, uncovered: list[int], why: str) -> None:
        super().__init__("", "session_failed", f"cannot serve blocks {start}-{end - 1}: {why}")
        self.start, self.end, self.uncovered = start, end, uncovered


@dataclass
class FailoverEvent:
    """One recovered failure, for stall statistics."""

    url: str
    code: str
    position: int  # session position when it happened
    blocks: tuple[int, int]  # the block range that was re-routed
    replacements: list[str]
    stall_s: float  # from the failing request's start until the session could go on
    replay_s: float  # of which: rebuilding the replacements' caches
    replay_tokens: int


class Recovery:
    """Replaces a session's failed hops within its failover policy's budget.

    Args:
        session: the session whose ``hop_sessions`` it replaces (it opens, steps and closes hops
            through the session, so that timing, statistics and audit checks apply to replays too).
    """

    def __init__(self, session: InferenceSession) -> None:
        self.session = session
        self.failures = 0

    def count_failure(self, exc: RemoteError, start: int, end: int) -> None:
        """Count one failure against the budget.

        Raises:
            SessionFailed: the budget (``max_failovers``) is spent.
        """
        self.failures += 1
        limit = self.session.policy.max_failovers
        if self.failures > limit:
            raise SessionFailed(start, end, [], f"gave up after {limit} failovers ({exc})") from exc

    def recover(
        self,
        i: int,
        exc: RemoteError,
        started: float,
        *,
        count: bool = True,
        ban: bool = True,
        end: int | None = None,
    ) -> None:
        """Replace hop ``i`` (and as few following hops as needed) by working nodes with rebuilt caches.

        ``end``: rebuild blocks up to there (default: up to the end of the fewest hops that can be replaced).

        Raises:
            SessionFailed: the retry budget ran out, or nobody covers the blocks within ``wait_for_cover_s``.
            RemoteError: a replacement refused the request itself (a client error).
        """
        s = self.session
        old = s.hop_sessions[i]
        start, old_end = old.hop.start, old.hop.end
        if count:
            self.count_failure(exc, start, old_end)
        if ban:
            s.bans.failed(exc.url or old.url)
        s.node_stats.setdefault(exc.url or old.url, [0, 0, 0, 0.0])[1] += 1
        s.close_hop(old)
        inputs = list(old.history)
        deadline = time.monotonic() + s.policy.wait_for_cover_s
        while True:
            hops, j, why = self._routes_from(i, end)
            if hops is None:
                if time.monotonic() >= deadline:
                    assert why is not None
                    raise SessionFailed(start, old_end, why.uncovered, str(why)) from exc
                time.sleep(s.policy.rediscover_every_s)
                self._rediscover()
                continue
            states = [HopSession(h) for h in hops]
            try:
                for hs in states:
                    s.open_hop(hs)
                replay_started = time.perf_counter()
                self._replay_into(states, inputs)
                replay_s = time.perf_counter() - replay_started
            except RemoteError as again:
                for hs in states:
                    s.close_hop(hs)
                if again.code in CLIENT_ERRORS:
                    raise
                self.count_failure(again, start, old_end)
                s.bans.failed(again.url)
                continue
            for hs in s.hop_sessions[i + 1 : j + 1]:
                s.close_hop(hs)
            s.hop_sessions[i : j + 1] = states
            s.failovers.append(
                FailoverEvent(
                    url=exc.url or old.url,
                    code=exc.code,
                    position=s.position,
                    blocks=(start, states[-1].hop.end),
                    replacements=[hs.url for hs in states],
                    stall_s=time.perf_counter() - started,
                    replay_s=replay_s,
                    replay_tokens=sum(c.shape[1] for c in inputs),
                )
            )
            return

    def rebuild_from(self, i: int, inputs: list[WireTensor], exc: RemoteError, started: float) -> None:
        """Close hops ``i..`` and rebuild blocks ``[hop i start, L)`` on fresh nodes from ``inputs``."""
        s = self.session
        for h in s.hop_sessions[i:]:
            s.close_hop(h)
        s.hop_sessions[i:] = [HopSession(s.hop_sessions[i].hop, inputs)]
        self.recover(i, exc, started, count=True, ban=False, end=s.num_blocks)

    def rebuild_all(self, culprit: str, exc: RemoteError, started: float) -> None:
        """After a failed pushed step nobody knows which caches advanced: rebuild every hop from hop 0's inputs."""
        s = self.session
        self.count_failure(exc, 0, s.num_blocks)
        if culprit:
            s.bans.failed(culprit)
        inputs = list(s.hop_sessions[0].history)
        for h in s.hop_sessions:
            s.close_hop(h)
        s.hop_sessions[:] = [HopSession(s.hop_sessions[0].hop, inputs)]
        self.recover(0, exc, started, count=False, ban=False, end=s.num_blocks)

    def _routes_from(self, i: int, end: int | None) -> tuple[list[Hop] | None, int, SwarmNotCovering | None]:
        """Cheapest replacement for hops i..j, for the smallest j that works."""
        s = self.session
        start = s.hop_sessions[i].hop.start
        last_error = None
        targets = [end] if end is not None else [h.hop.end for h in s.hop_sessions[i:]]
        for j, target in enumerate(targets):
            try:
                hops = route(
                    s.peers,
                    s.num_blocks,
                    start=start,
                    end=target,
                    model=s.model,
                    exclude=s.bans.banned() | s.distrusted,
                    rtts=s.rtts,
                    failures=s.bans.recent_failures(),
                    policy=s.routing,
                    cache_tokens_needed=s.max_length,
                )
                return hops, i + j, None
            except SwarmNotCovering as exc:
                last_error = exc
        return None, i, last_error

    def _replay_into(self, states: list[HopSession], inputs: list[WireTensor]) -> int:
        """Rebuild the caches of new hops from the inputs the first of them must have seen; return tokens replayed."""
        if self.session.policy.replay == "prefill" and len(inputs) > 1:
            inputs = [concat(inputs)]
        for hs in states:
            outs, position = [], 0
            for chunk in inputs:
                outs.append(self.session.step_hop(hs, chunk, position))
                position += chunk.shape[1]
            inputs = outs
        return sum(c.shape[1] for c in states[0].history) if states else 0

    def _rediscover(self) -> None:
        s = self.session
        if s.discover is None:
            return
        try:
            fresh = s.discover()
        except Exception:  # a tracker hiccup: keep what we know and try again later
            return
        if fresh:
            s.peers = list(fresh)
