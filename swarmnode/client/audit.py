"""Auditing the nodes of a session: signed results, cheap checks on every step, sampled replays elsewhere.

How it works (``swarmnode/protocol/README.md`` §11, ``README.md`` "Verified inference"):

- **Every step**: each hop's result must carry a valid signature of its digest (§11) by the key the
  node announced, have the input's shape and dtype, be finite, and keep its RMS within
  ``max_norm_ratio`` of the input's (cheap checks).
- **Audits**: on a schedule with mean rate ``rate``, the session replays each hop's whole input
  history as one cache-less ``forward`` on an *independent* route over the same blocks (other nodes,
  never the audited one) and compares every position produced since that hop's previous audit,
  within a dtype-aware tolerance. A cache-less replay recomputes all positions, so one audit checks
  every step since the last one: a node that lies on any step in between is caught at the next audit.
- The schedule draws the gap to the next audit uniformly from ``1 .. 2/rate - 1`` steps (mean
  ``1/rate``), so an audit comes at least every ``2/rate - 1`` steps (39 at 5 %): detection of a node
  that perturbs every step is guaranteed within that many steps, not just likely.
- On a mismatch, a third route (if the swarm has one) breaks the tie: whichever result disagrees with
  the other two is the culprit. Without a third route the audited hop is blamed.
- ``verified`` mode: the generation loop releases a token only once every hop's output that led to it
  has passed an audit; a failed audit rolls the session back to the last verified position (rebuilding
  caches without the culprit) and the tokens after it are computed again, so no token computed from a
  perturbed activation ever reaches the user.
- **Push** (§7) hides intermediate outputs from the client, so auditing needs chain mode: a session
  with auditing on does not push (documented choice; see ``InferenceSession``).

Everything here is synchronous and reuses :class:`RemoteSpan`; the session calls it between steps.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from swarmnode.client.remote import RemoteError, RemoteSpan
from swarmnode.discovery import PeerInfo
from swarmnode.discovery.portal_http import PortalHTTPError, call_json
from swarmnode.protocol import Forward, ForwardResult, WireTensor, all_finite
from swarmnode.protocol.compare import TOLERANCE, relative_errors, to_float32, tolerance_for
from swarmnode.trust.attestation import SignedResult, signed_result

log = logging.getLogger("swarmnode.audit")


@dataclass(frozen=True)
class AuditPolicy:
    """How a session checks its nodes.

    Attributes:
        rate: mean share of steps after which every hop is audited (0: never; 1: every step).
        mode: ``"sample"`` (audit and recover, tokens flow at once) or ``"verified"`` (a token is released
            only after the steps behind it passed an audit; see the module docstring).
        seed: seeds the audit schedule (None: random).
        require_signatures: results that are unsigned or badly signed fail the cheap checks.
        max_norm_ratio: cheap check: a hop's output RMS may be at most this many times its input's (and
            at least its inverse).
        tie_break: on a mismatch, replay on a third route (when one exists) to find who is wrong.
    """

    rate: float = 0.0
    mode: str = "sample"
    seed: int | None = None
    require_signatures: bool = True
    max_norm_ratio: float = 1e4
    tie_break: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"audit rate must lie in [0, 1], got {self.rate}")
        if self.mode not in ("sample", "verified"):
            raise ValueError(f"audit mode must be 'sample' or 'verified', got {self.mode!r}")
        if self.mode == "verified" and self.rate <= 0.0:
            raise ValueError("verified mode needs a positive audit rate")

    @property
    def enabled(self) -> bool:
        """Whether any audit or check runs."""
        return self.rate > 0.0

    @property
    def max_gap(self) -> int:
        """The most steps between two audits (the schedule's guarantee)."""
        return max(1, round(2.0 / self.rate) - 1) if self.rate > 0 else 0


class AuditSchedule:
    """When to audit: gaps drawn uniformly from ``1 .. policy.max_gap`` (mean ``1/rate``), seeded.

    Call :meth:`due` once per step; it says whether to audit after this step.
    """

    def __init__(self, policy: AuditPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random(policy.seed)
        self._left = self._draw()

    def _draw(self) -> int:
        if not self.policy.enabled:
            return -1
        if self.policy.rate >= 1.0:
            return 1
        return self._rng.randint(1, self.policy.max_gap)

    def due(self) -> bool:
        """Count one step; True when an audit should follow it."""
        if self._left < 0:
            return False
        self._left -= 1
        if self._left == 0:
            self._left = self._draw()
            return True
        return False


class AuditFailed(RemoteError):
    """A node's result failed a check or an audit (code ``audit_failed``); the session treats it as a failure."""

    def __init__(self, url: str, message: str, evidence: Evidence | None = None) -> None:
        super().__init__(url, "audit_failed", message)
        self.evidence = evidence


def check_signature(peer: PeerInfo, result: SignedResult, policy: AuditPolicy) -> str | None:
    """Why a result's signature is not acceptable, or None."""
    if not policy.require_signatures:
        return None
    if not result.signature:
        return "result is not signed"
    if not peer.public_key:
        return "node announced no public key"
    if not result.verify(peer.public_key):
        return "signature does not match the node's announced key"
    return None


def cheap_check(inputs: WireTensor, out: WireTensor | None, policy: AuditPolicy) -> str | None:
    """Why a hop's output is implausible (shape, dtype, non-finite, norm far off the input's), or None."""
    if out is None or out.shape != inputs.shape or out.dtype != inputs.dtype:
        return "result missing or of the wrong shape"
    if not all_finite(out):
        return "result contains NaN or infinite values"
    x, y = to_float32(inputs), to_float32(out)
    rin, rout = float(np.sqrt(np.mean(np.square(x)))), float(np.sqrt(np.mean(np.square(y))))
    if rin > 0 and not (1.0 / policy.max_norm_ratio <= rout / rin <= policy.max_norm_ratio):
        return f"result RMS {rout:.3g} is implausible for an input RMS of {rin:.3g}"
    return None


@dataclass
class Evidence:
    """A passed or failed audit of one node's step, with both sides' signed results (JSON for the portal)."""

    node: PeerInfo
    auditor: PeerInfo
    passed: bool
    session_id: str
    position: int  # cache position of the compared step
    relative_error: float
    tolerance: float
    claim: SignedResult | None = None  # the audited node's step result
    reference: SignedResult | None = None  # the auditor's (last node of the audit route) forward result
    detail: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The body of ``POST /api/v1/reputation/evidence/``."""
        return {
            "node": self.node.node_id,
            "auditor": self.auditor.node_id,
            "passed": self.passed,
            "session_id": self.session_id,
            "position": self.position,
            "relative_error": float(self.relative_error),
            "tolerance": float(self.tolerance),
            "claim": self.claim.to_json() if self.claim else None,
            "reference": self.reference.to_json() if self.reference else None,
            "detail": self.detail,
        }


class EvidenceReporter:
    """Sends evidence and step reports to a portal in a background thread (never blocks a step).

    Args:
        portal: the portal's base URL.
        api_key: an API key (``Authorization: Bearer``) of the reporting user.
        timeout: seconds per request.
    """

    def __init__(self, portal: str, api_key: str, timeout: float = 10.0) -> None:
        self.portal = portal.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.sent = 0
        self.errors: list[str] = []
        # Reports the portal declined to count (HTTP 403 with a code, e.g. ``no_dealings``: step reports count only
        # from clients holding the node's receipts). Not errors: the portal answered, it keeps the report out.
        self.refused: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="evidence-reporter", daemon=True)
        self._thread.start()

    def evidence(self, ev: Evidence) -> None:
        """Queue an audit result (only nodes the tracker knows, ``node_id`` > 0, can be reported)."""
        if ev.node.node_id:
            self._queue.put(("/api/v1/reputation/evidence/", ev.to_json()))

    def steps(self, peer: PeerInfo, ok: int, failed: int, measured_throughput: float | None = None) -> None:
        """Queue a report of steps a node served or failed."""
        if peer.node_id:
            body = {"node": peer.node_id, "ok": ok, "failed": failed}
            if measured_throughput is not None:
                body["measured_throughput"] = measured_throughput
            self._queue.put(("/api/v1/reputation/steps/", body))

    def _run(self) -> None:
        while True:
            path, body = self._queue.get()
            try:
                call_json("POST", self.portal + path, token=self.api_key, body=body, timeout=self.timeout)
                self.sent += 1
            except PortalHTTPError as exc:
                code = exc.code if exc.status == 403 else None
                (self.refused if code else self.errors).append(f"{path}: {code or exc}")
                log.info("the portal did not take a report: %s", code or exc)
            except (OSError, ValueError) as exc:
                self.errors.append(f"{path}: {exc}")
                log.info("could not report to the portal: %s", exc)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued report was sent (or failed)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        done.wait(timeout)


@dataclass
class Replay:
    """The output of a cache-less replay over a route, and the last route node's signed result."""

    output: WireTensor  # (B, P, H)
    peers: list[PeerInfo]
    signed: SignedResult


class ReplayPool:
    """Connections to the nodes used for replays, kept open across audits of a session.

    Args:
        timeout: seconds per forward.
        policy: the audit policy (signatures of replays are checked the same way).
        secure: as the session's (``ClientConfig.secure``): a replay carries the session's whole input
            history, so it is encrypted wherever the session's own steps are, with the key the route lists.
    """

    def __init__(self, policy: AuditPolicy, timeout: float = 60.0, secure: bool | None = None) -> None:
        self.policy = policy
        self.timeout = timeout
        self.secure = secure
        self._spans: dict[str, RemoteSpan] = {}

    def _span(self, peer: PeerInfo) -> RemoteSpan:
        span = self._spans.get(peer.url)
        if span is None:
            span = RemoteSpan(peer.url, timeout=min(self.timeout, 10.0), public_key=peer.public_key, secure=self.secure)
            self._spans[peer.url] = span
        return span

    def forward(self, route: list, inputs: WireTensor) -> Replay:
        """Run ``inputs`` through the route's hops (``Hop`` s of whole spans) without any cache.

        Raises:
            RemoteError: a route node failed, or its result is unsigned/badly signed or implausible.
        """
        x = inputs
        signed = None
        for hop in route:
            try:
                reply = self._span(hop.peer).request(Forward(hidden=x), timeout=self.timeout)
            except RemoteError:
                self.drop(hop.url)
                raise
            out = reply.hidden if isinstance(reply, ForwardResult) else None
            why = cheap_check(x, out, self.policy)
            if why is None:
                signed = signed_result(
                    "forward", "", 0, (hop.peer.start_block, hop.peer.end_block), x, out, reply.signature
                )
                why = check_signature(hop.peer, signed, self.policy)
            if why is not None:
                raise AuditFailed(hop.url, f"replay: {why}")
            x = out
        assert signed is not None
        return Replay(x, [h.peer for h in route], signed)

    def drop(self, url: str) -> None:
        """Forget (and close) the connection to ``url``."""
        span = self._spans.pop(url, None)
        if span is not None:
            span.close()

    def close(self) -> None:
        """Close every connection."""
        for url in list(self._spans):
            self.drop(url)


AuditHook = Callable[[Evidence], None]

__all__ = [
    "TOLERANCE",
    "AuditFailed",
    "AuditPolicy",
    "AuditSchedule",
    "Evidence",
    "EvidenceReporter",
    "ReplayPool",
    "SignedResult",
    "cheap_check",
    "check_signature",
    "relative_errors",
    "signed_result",
    "to_float32",
    "tolerance_for",
]
