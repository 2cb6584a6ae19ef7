"""Auditing one session's hops: the checks on every step, the scheduled replays, what a catch triggers.

The policy, the schedule, the cheap checks and the replay connections are in
:mod:`swarmnode.client.audit`; this module applies them to the hops of an
:class:`~swarmnode.client.session.InferenceSession`. A node caught lying is distrusted for good by
this client, reported, and replaced; in ``verified`` mode the session rolls back to the last
verified position (:class:`AuditRollback`) so the caller recomputes the tokens after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from swarmnode.client.audit import (
    AuditFailed,
    AuditPolicy,
    AuditSchedule,
    Evidence,
    Replay,
    ReplayPool,
    cheap_check,
    check_signature,
    relative_errors,
    signed_result,
    to_float32,
    tolerance_for,
)
from swarmnode.client.hop import HopSession, concat
from swarmnode.client.remote import RemoteError
from swarmnode.client.routing import Hop, SwarmNotCovering, route
from swarmnode.protocol import WireTensor

if TYPE_CHECKING:
    from swarmnode.client.session import InferenceSession


class AuditRollback(Exception):
    """Verified mode: an audit failed; the session went back to cache position ``position``.

    Every token computed from positions at or after it must be computed again (the caller feeds the
    inputs from ``position`` on once more).
    """

    def __init__(self, position: int, cause: RemoteError) -> None:
        super().__init__(f"rolled back to position {position}: {cause}")
        self.position = position
        self.cause = cause


@dataclass
class AuditStats:
    """What the audits of a session did."""

    rounds: int = 0  # audit rounds (every hop replayed once per round)
    hop_audits: int = 0
    steps_compared: int = 0  # hop-steps compared against a replay
    passed: int = 0
    failed: int = 0  # audits that caught a node
    check_failures: int = 0  # results that failed the cheap checks or the signature check
    skipped: int = 0  # hop audits without an independent route
    rollbacks: int = 0
    first_detection_step: int | None = None  # session step (1-based) of the first catch
    caught: list[str] = field(default_factory=list)  # URLs caught lying
    audit_s: float = 0.0  # time spent auditing


class SessionAuditor:
    """Checks and audits the hops of one session (a no-op while the policy is disabled).

    Args:
        session: the audited session (its hops, position, peers and failure state).
        policy: how to check.
        on_evidence: called with every audit's :class:`Evidence` (e.g. an ``EvidenceReporter``).
    """

    def __init__(
        self,
        session: InferenceSession,
        policy: AuditPolicy,
        on_evidence: Callable[[Evidence], None] | None = None,
    ) -> None:
        self.session = session
        self.policy = policy
        self.on_evidence = on_evidence
        self.stats = AuditStats()
        self._schedule = AuditSchedule(policy)
        self._replays = ReplayPool(policy, session.timeout, session.secure) if policy.enabled else None

    @property
    def enabled(self) -> bool:
        """Whether any check or audit runs."""
        return self.policy.enabled

    def due(self) -> bool:
        """Count one step; True when a round of audits should follow it."""
        return self._schedule.due()

    def check_step(self, hs: HopSession, wire: WireTensor, out: WireTensor, signature: str, position: int) -> None:
        """Cheap checks and the signature of one hop's result (every step, when auditing).

        Raises:
            AuditFailed: the result is implausible or not signed by the node (now distrusted).
        """
        why = cheap_check(wire, out, self.policy)
        if why is None:
            signed = signed_result("step", self.session.session_id, position, hs.blocks, wire, out, signature)
            why = check_signature(hs.peer, signed, self.policy)
        if why is not None:
            self.stats.check_failures += 1
            self.distrust(hs.url)
            raise AuditFailed(hs.url, why)

    def audit_round(self) -> None:
        """Replay every hop's inputs on an independent route and compare; see ``InferenceSession.audit_now``."""
        if not self.policy.enabled:
            return
        session = self.session
        started = time.perf_counter()
        self.stats.rounds += 1
        try:
            all_checked = True
            for hs in list(session.hop_sessions):
                if not self._audit_hop(hs):
                    all_checked = False
            if all_checked:
                session.verified_position = session.position
        except AuditFailed as exc:
            self._after_failed_audit(exc, started)
        finally:
            self.stats.audit_s += time.perf_counter() - started

    def distrust(self, url: str) -> None:
        """Never use ``url`` again in this client (the distrusted set is shared by its sessions)."""
        self.session.distrusted.add(url)
        self.session.bans.failed(url)

    def close(self) -> None:
        """Close the replay connections."""
        if self._replays is not None:
            self._replays.close()

    # -- replays ---------------------------------------------------------------------------

    def _audit_route(self, hs: HopSession, also_exclude: set[str] = frozenset()) -> list[Hop] | None:
        s = self.session
        exclude = s.bans.banned() | s.distrusted | {hs.url} | set(also_exclude)
        try:
            return route(
                s.peers,
                s.num_blocks,
                start=hs.hop.start,
                end=hs.hop.end,
                model=s.model,
                exclude=exclude,
                rtts=s.rtts,
                policy=s.routing,
            )
        except SwarmNotCovering:
            return None

    def _replay(self, hs: HopSession, inputs: WireTensor, also_exclude: set[str] = frozenset()) -> Replay | None:
        """A replay of ``inputs`` on an independent route; None when there is none. Failing auditors are banned."""
        assert self._replays is not None
        tried: set[str] = set(also_exclude)
        for _ in range(3):
            hops = self._audit_route(hs, tried)
            if hops is None:
                return None
            try:
                return self._replays.forward(hops, inputs)
            except RemoteError as exc:
                self.session.bans.failed(exc.url)
                tried.add(exc.url)
        return None

    # -- one hop ---------------------------------------------------------------------------

    def _audit_hop(self, hs: HopSession) -> bool:
        """Compare the hop's unaudited outputs with a replay elsewhere; False when no replay was possible.

        Raises:
            AuditFailed: the hop's node is the culprit (evidence reported).
        """
        if not hs.unaudited:
            return True
        session_id = self.session.session_id
        inputs = concat(hs.history)  # (B, P, H): every position the hop has seen
        replay = self._replay(hs, inputs)
        if replay is None:
            self.stats.skipped += 1
            if self.policy.mode == "verified":
                raise RemoteError(hs.url, "no_auditor", f"no independent route serves blocks {hs.blocks}")
            return False
        self.stats.hop_audits += 1
        ref = to_float32(replay.output)
        tol = tolerance_for(hs.peer.dtype, self.session.wire_dtype, *(p.dtype for p in replay.peers))
        worst, bad = 0.0, None
        for entry in hs.unaudited:
            position, _, out, _ = entry
            err = float(relative_errors(to_float32(out), ref[:, position : position + out.shape[1]]).max())
            self.stats.steps_compared += 1
            if err > tol and bad is None:
                bad = (entry, err)
            worst = max(worst, err)
        auditor = replay.peers[-1]
        if bad is None:
            position, wire, out, sig = hs.unaudited[-1]
            claim = signed_result("step", session_id, position, hs.blocks, wire, out, sig)
            self._report(Evidence(hs.peer, auditor, True, session_id, position, worst, tol, claim, replay.signed))
            self.stats.passed += 1
            hs.unaudited.clear()
            return True
        (position, wire, out, sig), err = bad
        if self.policy.tie_break and self._auditor_is_wrong(hs, inputs, replay, position, out, tol):
            return self._audit_hop(hs)  # the auditor lied and is banned now: audit again elsewhere
        claim = signed_result("step", session_id, position, hs.blocks, wire, out, sig)
        reference = replay.signed
        end = position + out.shape[1]
        if end != inputs.shape[1]:  # the reference must end where the claim ends: replay up to there
            shorter = self._replay(hs, concat(hs.history[: hs.chunks_before(end)]))
            reference = shorter.signed if shorter is not None else None
        self._report(Evidence(hs.peer, auditor, False, session_id, position, err, tol, claim, reference))
        self.stats.failed += 1
        if self.stats.first_detection_step is None:
            self.stats.first_detection_step = self.session.steps
        self.stats.caught.append(hs.url)
        self.distrust(hs.url)
        raise AuditFailed(hs.url, f"output at position {position} differs from a replay by {err:.3g} (> {tol:.3g})")

    def _auditor_is_wrong(
        self, hs: HopSession, inputs: WireTensor, replay: Replay, position: int, out: WireTensor, tol: float
    ) -> bool:
        """Tie-break on a third route: True (and the auditors distrusted) when it sides with the audited node."""
        third = self._replay(hs, inputs, also_exclude={p.url for p in replay.peers})
        if third is None:
            return False
        rows = slice(position, position + out.shape[1])
        third_rows = to_float32(third.output)[:, rows]
        agrees_with_node = float(relative_errors(to_float32(out), third_rows).max()) <= tol
        agrees_with_auditor = float(relative_errors(to_float32(replay.output)[:, rows], third_rows).max()) <= tol
        if agrees_with_node and not agrees_with_auditor:
            for peer in replay.peers:
                self.distrust(peer.url)
                self.stats.caught.append(peer.url)
            return True
        return False

    def _report(self, evidence: Evidence) -> None:
        if self.on_evidence is not None:
            try:
                self.on_evidence(evidence)
            except Exception:  # reporting must never break a session
                pass

    def _after_failed_audit(self, exc: AuditFailed, started: float) -> None:
        """Rebuild after a caught node: from its hop on (sample), or everything from the verified position."""
        session = self.session
        hops = session.hop_sessions
        i = next((k for k, h in enumerate(hops) if h.url == exc.url), 0)
        if self.policy.mode == "verified":
            self.stats.rollbacks += 1
            v = session.verified_position
            inputs = hops[0].history[: hops[0].chunks_before(v)]
            session.recovery.rebuild_from(0, inputs, exc, started)
            session.position = v
            raise AuditRollback(v, exc) from exc
        session.recovery.rebuild_from(i, list(hops[i].history), exc, started)
