"""An inference session across a chain of nodes, each keeping its part of the KV cache, with failover.

The client keeps, per hop, every input it has sent in this session. When a node fails
(disconnect, timeout, error reply, output of the wrong shape or with NaN), the session bans it,
re-routes only the failed block range, replays the kept inputs into the replacement nodes to
rebuild their caches, and carries on from the same position. With ``replay="exact"`` the
replacement sees exactly the steps the failed node saw, so its cache (and every later token) is
bit-identical to an undisturbed run.

With an :class:`~swarmnode.client.audit.AuditPolicy`, every hop's result is also checked (signature,
shape, finite values, norm) and, on a schedule, replayed on an independent route and compared
(``swarmnode/client/audit.py``). A node caught lying is banned for good by this client, reported to
the portal, and replaced; in ``verified`` mode the session rolls back to the last verified position
(:class:`AuditRollback`) so the caller recomputes the tokens after it.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from swarmnode.client.audit import (
    AuditFailed,
    AuditPolicy,
    AuditSchedule,
    Evidence,
    ReplayPool,
    cheap_check,
    check_signature,
    relative_errors,
    signed_result,
    to_float32,
    tolerance_for,
)
from swarmnode.client.failover import BanList, FailoverPolicy, StepTimer
from swarmnode.client.remote import POOL, PeerInfo, RemoteError, RemoteSpan
from swarmnode.client.routing import Hop, RoutingPolicy, SwarmNotCovering, route
from swarmnode.models.wire import tensor_to_wire, wire_to_tensor
from swarmnode.protocol import (
    CloseSession,
    OpenSession,
    SessionClosed,
    Step,
    StepResult,
    WireTensor,
    all_finite,
    tensor_from_numpy,
)
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import ReceiptError, SignedReceipt, UsageReceipt, key_of, signing_key

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


@dataclass
class _HopState:
    hop: Hop
    span: RemoteSpan | None = None
    history: list[WireTensor] = field(default_factory=list)  # inputs sent, in order (None-free)
    tokens: int = 0  # positions this node ran for us (B x T summed): the usage receipt's count (spec §8.2)
    # Audits: outputs not yet compared against a replay, as (position, input, output, signature).
    unaudited: list[tuple[int, WireTensor, WireTensor, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.hop.url


def _concat(chunks: list[WireTensor]) -> WireTensor:
    return tensor_from_numpy(np.concatenate([c.to_numpy() for c in chunks], axis=1), chunks[0].dtype)


def _blocks(hs: _HopState) -> tuple[int, int]:
    """The blocks a hop's node signs for: its whole announced span."""
    return hs.hop.peer.start_block, hs.hop.peer.end_block


def _chunks_before(hs: _HopState, position: int) -> int:
    """How many of the hop's input chunks lie entirely before cache position ``position``."""
    total, n = 0, 0
    for chunk in hs.history:
        if total + chunk.shape[1] > position:
            break
        total += chunk.shape[1]
        n += 1
    return n


class InferenceSession:
    """Push hidden states through every span of a chain, keeping a cache on each node, surviving failures.

    Args:
        chain: the initial route: whole spans (:class:`PeerInfo`) or :class:`Hop` s, in block order.
        max_length: most tokens (prompt + generated) the session will hold.
        wire_dtype: dtype of activations on the wire.
        timeout: seconds to wait to connect, and for replies whose duration is not known yet.
        peers: every known node, spares included (default: the chain alone, so no failover target).
        num_blocks: blocks of the model (default: where the chain ends).
        model: the model's name, to skip nodes of other models.
        discover: returns a fresh peer list (tracker or static peers), called while no node covers a
            failed range.
        bans, timer: shared failure state (a model keeps one across sessions).
        rtts: smoothed RTTs per URL for routing.
        routing: how replacement hops are priced.
        failover: retry budget, ban backoff, timeouts and replay mode.
        identity: the client's key pair; with it, closing the session on a node sends a signed usage
            receipt and keeps the node's countersigned copy in :attr:`receipts` (spec §8).
        on_receipt: called with each countersigned receipt (e.g. to submit it to the portal).
        secure: end-to-end encryption to every node (spec §10); ``None``: only to relayed nodes.
        push: server-to-server push (spec §7): each step goes to the first node only. Ignored when
            auditing: audits need every hop's inputs and outputs, which push hides from the client.
        audit: how to check the nodes (default: no checks).
        on_evidence: called with every audit's :class:`Evidence` (e.g. an ``EvidenceReporter``).
        distrusted: URLs caught lying, never used again (shared by a model's sessions; grows here).
        on_close: called once with the session when it closes (e.g. to report :attr:`node_stats`).
        prefix_salt: nodes reuse first-prompt prefixes among sessions with this salt (spec §4.9); "": none.

    Raises:
        RemoteError: no chain could be opened (``SessionFailed`` once failover gives up).
    """

    def __init__(
        self,
        chain: list[PeerInfo] | list[Hop],
        max_length: int,
        wire_dtype: str = "float32",
        timeout: float = 60.0,
        *,
        peers: list[PeerInfo] | None = None,
        num_blocks: int | None = None,
        model: str = "",
        discover: Callable[[], list[PeerInfo]] | None = None,
        bans: BanList | None = None,
        timer: StepTimer | None = None,
        rtts: dict[str, float] | None = None,
        routing: RoutingPolicy | None = None,
        failover: FailoverPolicy | None = None,
        push: bool = False,
        identity: NodeIdentity | None = None,
        on_receipt: Callable[[SignedReceipt], None] | None = None,
        secure: bool | None = None,
        audit: AuditPolicy | None = None,
        on_evidence: Callable[[Evidence], None] | None = None,
        distrusted: set[str] | None = None,
        on_close: Callable[[InferenceSession], None] | None = None,
        prefix_salt: str = "",
    ) -> None:
        self.identity = identity
        self.on_receipt = on_receipt
        self.receipts: list[SignedReceipt] = []  # countersigned by the nodes, one per closed hop (§8)
        self.receipt_errors: list[str] = []  # why a node did not countersign
        hops = [h if isinstance(h, Hop) else Hop(h, h.start_block, h.end_block) for h in chain]
        self.audit = audit or AuditPolicy()
        self.on_evidence = on_evidence
        self.on_close = on_close
        self.distrusted = distrusted if distrusted is not None else set()
        self.audit_stats = AuditStats()
        self._schedule = AuditSchedule(self.audit)
        self._replays = ReplayPool(self.audit, timeout) if self.audit.enabled else None
        self.verified_position = 0  # verified mode: every hop's output before this position passed an audit
        self.steps = 0
        # Per node URL: [steps served, steps failed, one-token steps timed, their seconds] (reputation reports).
        self.node_stats: dict[str, list[float]] = {}
        if self.audit.enabled:
            push = False
        self.max_length = max_length
        self.wire_dtype = wire_dtype
        self.timeout = timeout
        self.session_id = uuid.uuid4().hex
        self.position = 0
        self.peers = list(peers) if peers is not None else [h.peer for h in hops]
        self.num_blocks = num_blocks if num_blocks is not None else hops[-1].end
        self.model = model
        self.discover = discover
        self.policy = failover or FailoverPolicy(first_step_timeout_s=timeout)
        self.bans = bans or BanList(self.policy)
        self.timer = timer or StepTimer(self.policy)
        self.rtts = rtts or {}
        self.routing = routing or RoutingPolicy()
        self.push = push
        self.secure = secure
        self.push_key = secrets.token_hex(16) if push else ""
        self.prefix_salt = prefix_salt
        self.cached_tokens: dict[str, int] = {}  # per node URL: prompt positions it reused (§4.9)
        self.failovers: list[FailoverEvent] = []
        self._failures = 0
        self._hops = [_HopState(h) for h in hops]
        try:
            i = 0
            while i < len(self._hops):
                try:
                    self._open(self._hops[i])
                    i += 1
                except RemoteError as exc:
                    self._recover(i, exc, time.perf_counter())
        except BaseException:
            self.close()
            raise

    @property
    def chain(self) -> list[PeerInfo]:
        """The nodes in use now, in block order."""
        return [h.hop.peer for h in self._hops]

    @property
    def hops(self) -> list[Hop]:
        """The hops in use now, in block order."""
        return [h.hop for h in self._hops]

    # -- one node -------------------------------------------------------------------------

    def _open(self, hs: _HopState) -> None:
        opening = OpenSession(
            session_id=self.session_id,
            max_length=self.max_length,
            dtype=self.wire_dtype,
            push_key=self.push_key,
            prefix_salt=self.prefix_salt,
        )
        timeout = min(self.timeout, 10.0)
        hs.span, _ = POOL.open(
            hs.url,
            timeout,
            lambda span: span.request(opening, timeout=timeout),
            public_key=hs.hop.peer.public_key,
            secure=self.secure,
        )

    def _check(self, url: str, out: WireTensor | None, sent: WireTensor) -> WireTensor:
        if out is None or out.shape != sent.shape or out.dtype != sent.dtype:
            raise RemoteError(url, "bad_reply", "step result missing or of the wrong shape")
        if not all_finite(out):
            raise RemoteError(url, "bad_reply", "step result contains NaN or infinite values")
        return out

    def _step_hop(self, hs: _HopState, wire: WireTensor, position: int) -> WireTensor:
        assert hs.span is not None
        tokens = wire.shape[1]
        started = time.perf_counter()
        reply = hs.span.request(
            Step(session_id=self.session_id, position=position, hidden=wire, skip_signature=not self.audit.enabled),
            timeout=self.timer.timeout(hs.url, tokens),
        )
        out = self._check(hs.url, reply.hidden if isinstance(reply, StepResult) else None, wire)
        if position == 0:
            self.cached_tokens[hs.url] = reply.cached_tokens
        if self.audit.enabled:
            self._check_result(hs, wire, out, reply.signature, position)
        elapsed = time.perf_counter() - started
        self.timer.record(hs.url, tokens, elapsed)
        counts = self.node_stats.setdefault(hs.url, [0, 0, 0, 0.0])
        counts[0] += 1
        if tokens == 1:
            counts[2] += 1
            counts[3] += elapsed
        self.bans.succeeded(hs.url)
        hs.history.append(wire)
        hs.tokens += wire.shape[0] * wire.shape[1]
        if self.audit.enabled:
            hs.unaudited.append((position, wire, out, reply.signature))
        return out

    def _check_result(self, hs: _HopState, wire: WireTensor, out: WireTensor, signature: str, position: int) -> None:
        """Cheap checks and the signature of one hop's result (every step, when auditing)."""
        why = cheap_check(wire, out, self.audit)
        if why is None:
            signed = signed_result("step", self.session_id, position, _blocks(hs), wire, out, signature)
            why = check_signature(hs.hop.peer, signed, self.audit)
        if why is not None:
            self.audit_stats.check_failures += 1
            self._distrust(hs.url)
            raise AuditFailed(hs.url, why)

    # -- steps ------------------------------------------------------------------------------

    def step(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        """Run new positions through all spans; their keys/values stay in the nodes' caches.

        A failing node is replaced transparently (see the module docstring).

        Raises:
            RemoteError: a node refused the request itself (e.g. ``session_full``), or
                :class:`SessionFailed` when failover gives up.
        """
        wire = tensor_to_wire(hidden, self.wire_dtype)
        out = self._push_step(wire) if self.push and len(self._hops) > 1 else self._chain_step(wire)
        self.position += hidden.shape[1]
        self.steps += 1
        if self._schedule.due():
            self.audit_now()
        return wire_to_tensor(out, hidden.dtype)

    # -- audits ---------------------------------------------------------------------------------

    def audit_now(self) -> None:
        """Replay every hop's inputs on an independent route and compare (see ``swarmnode/client/audit.py``).

        In ``sample`` mode a caught node is replaced (its hop and the later ones rebuilt) and the session
        goes on; in ``verified`` mode the session rolls back to the last verified position.

        Raises:
            AuditRollback: verified mode, an audit failed (the session is rebuilt at ``position``).
            RemoteError: verified mode, some hop has no independent route to audit it.
        """
        if not self.audit.enabled:
            return
        started = time.perf_counter()
        self.audit_stats.rounds += 1
        try:
            all_checked = True
            for i in range(len(self._hops)):
                if not self._audit_hop(i):
                    all_checked = False
            if all_checked:
                self.verified_position = self.position
        except AuditFailed as exc:
            self._after_failed_audit(exc, started)
        finally:
            self.audit_stats.audit_s += time.perf_counter() - started

    def _audit_route(self, hs: _HopState, also_exclude: set[str] = frozenset()) -> list[Hop] | None:
        exclude = self.bans.banned() | self.distrusted | {hs.url} | set(also_exclude)
        try:
            return route(
                self.peers,
                self.num_blocks,
                start=hs.hop.start,
                end=hs.hop.end,
                model=self.model,
                exclude=exclude,
                rtts=self.rtts,
                policy=self.routing,
            )
        except SwarmNotCovering:
            return None

    def _replay(self, hs: _HopState, inputs: WireTensor, also_exclude: set[str] = frozenset()):
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
                self.bans.failed(exc.url)
                tried.add(exc.url)
        return None

    def _audit_hop(self, i: int) -> bool:
        """Compare hop ``i``'s unaudited outputs with a replay elsewhere; False when no replay was possible.

        Raises:
            AuditFailed: the hop's node is the culprit (evidence reported).
        """
        hs = self._hops[i]
        if not hs.unaudited:
            return True
        inputs = _concat(hs.history)  # (B, P, H): every position the hop has seen
        replay = self._replay(hs, inputs)
        if replay is None:
            self.audit_stats.skipped += 1
            if self.audit.mode == "verified":
                raise RemoteError(hs.url, "no_auditor", f"no independent route serves blocks {_blocks(hs)}")
            return False
        self.audit_stats.hop_audits += 1
        ref = to_float32(replay.output)
        tol = tolerance_for(hs.hop.peer.dtype, self.wire_dtype, *(p.dtype for p in replay.peers))
        worst, bad = 0.0, None
        for entry in hs.unaudited:
            position, _, out, _ = entry
            err = float(relative_errors(to_float32(out), ref[:, position : position + out.shape[1]]).max())
            self.audit_stats.steps_compared += 1
            if err > tol and bad is None:
                bad = (entry, err)
            worst = max(worst, err)
        auditor = replay.peers[-1]
        if bad is None:
            position, wire, out, sig = hs.unaudited[-1]
            claim = signed_result("step", self.session_id, position, _blocks(hs), wire, out, sig)
            self._report(
                Evidence(hs.hop.peer, auditor, True, self.session_id, position, worst, tol, claim, replay.signed)
            )
            self.audit_stats.passed += 1
            hs.unaudited.clear()
            return True
        (position, wire, out, sig), err = bad
        if self.audit.tie_break and self._auditor_is_wrong(hs, inputs, replay, position, out, tol):
            return self._audit_hop(i)  # the auditor lied and is banned now: audit again elsewhere
        claim = signed_result("step", self.session_id, position, _blocks(hs), wire, out, sig)
        reference = replay.signed
        end = position + out.shape[1]
        if end != inputs.shape[1]:  # the reference must end where the claim ends: replay up to there
            shorter = self._replay(hs, _concat(hs.history[: _chunks_before(hs, end)]))
            reference = shorter.signed if shorter is not None else None
        evidence = Evidence(hs.hop.peer, auditor, False, self.session_id, position, err, tol, claim, reference)
        self._report(evidence)
        self.audit_stats.failed += 1
        if self.audit_stats.first_detection_step is None:
            self.audit_stats.first_detection_step = self.steps
        self.audit_stats.caught.append(hs.url)
        self._distrust(hs.url)
        raise AuditFailed(hs.url, f"output at position {position} differs from a replay by {err:.3g} (> {tol:.3g})")

    def _auditor_is_wrong(self, hs: _HopState, inputs: WireTensor, replay, position: int, out, tol: float) -> bool:
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
                self._distrust(peer.url)
                self.audit_stats.caught.append(peer.url)
            return True
        return False

    def _distrust(self, url: str) -> None:
        self.distrusted.add(url)
        self.bans.failed(url)

    def _report(self, evidence: Evidence) -> None:
        if self.on_evidence is not None:
            try:
                self.on_evidence(evidence)
            except Exception:  # reporting must never break a session
                pass

    def _after_failed_audit(self, exc: AuditFailed, started: float) -> None:
        """Rebuild after a caught node: from its hop on (sample), or everything from the verified position."""
        i = next((k for k, h in enumerate(self._hops) if h.url == exc.url), 0)
        if self.audit.mode == "verified":
            self.audit_stats.rollbacks += 1
            v = self.verified_position
            inputs = self._hops[0].history[: _chunks_before(self._hops[0], v)]
            self._rebuild_from(0, inputs, exc, started)
            self.position = v
            raise AuditRollback(v, exc) from exc
        self._rebuild_from(i, list(self._hops[i].history), exc, started)

    def _rebuild_from(self, i: int, inputs: list[WireTensor], exc: RemoteError, started: float) -> None:
        """Close hops ``i..`` and rebuild blocks ``[hop i start, L)`` on fresh nodes from ``inputs``."""
        for h in self._hops[i:]:
            self._close_hop(h)
        first = _HopState(self._hops[i].hop)
        first.history = inputs
        self._hops = self._hops[:i] + [first]
        self._recover(i, exc, started, count=True, ban=False, end=self.num_blocks)

    def _chain_step(self, wire: WireTensor) -> WireTensor:
        i = 0
        while i < len(self._hops):
            started = time.perf_counter()
            try:
                out = self._step_hop(self._hops[i], wire, self.position)
            except RemoteError as exc:
                if exc.code in CLIENT_ERRORS:
                    raise
                self._recover(i, exc, started)
                continue  # the same input into the replacement, at the same position
            wire = out
            i += 1
        return wire

    def _push_step(self, wire: WireTensor) -> WireTensor:
        """One step sent to the first node only; the last node sends the result back (spec §7)."""
        started = time.perf_counter()
        first, last = self._hops[0], self._hops[-1]
        assert first.span is not None and last.span is not None
        tokens = wire.shape[1]
        deadline = started + sum(self.timer.timeout(h.url, tokens) for h in self._hops)
        failed: RemoteError | None = None
        try:
            rid = first.span.send(
                Step(
                    session_id=self.session_id,
                    position=self.position,
                    hidden=wire,
                    push_key=self.push_key,
                    route=tuple(h.url for h in self._hops[1:]),
                    skip_signature=True,  # push hides the results an audit would check (no push while auditing)
                )
            )
        except RemoteError as exc:
            failed = exc
        while failed is None:
            try:
                reply = last.span.receive(0.02)
            except RemoteError as exc:
                failed = exc
                break
            if isinstance(reply, StepResult) and reply.id == rid:
                try:
                    out = self._check(last.url, reply.hidden, wire)
                except RemoteError as exc:
                    failed = exc
                    break
                for h in self._hops:
                    self.timer.record(h.url, tokens, (time.perf_counter() - started) / len(self._hops))
                    self.bans.succeeded(h.url)
                    h.tokens += wire.shape[0] * tokens
                first.history.append(wire)  # later hops' inputs never reach the client
                return out
            for h in self._hops[:-1]:  # an error anywhere on the route is reported to us (§7.3)
                try:
                    h.span.receive(0) if h.span is not None else None
                except RemoteError as exc:
                    failed = exc
                    break
            if failed is None and time.perf_counter() > deadline:
                failed = RemoteError(last.url, "timeout", "pushed step did not come back in time")
        if failed.code in CLIENT_ERRORS:
            raise failed
        culprit = failed.message.strip() if failed.code == "push_failed" else failed.url
        return self._rebuild_all(culprit, failed, started, wire)

    def _rebuild_all(self, culprit: str, exc: RemoteError, started: float, wire: WireTensor) -> WireTensor:
        """After a failed pushed step nobody knows which caches advanced: rebuild every hop from hop 0's inputs."""
        self._count_failure(exc, 0, self.num_blocks)
        if culprit:
            self.bans.failed(culprit)
        inputs = list(self._hops[0].history)
        for h in self._hops:
            self._close_hop(h)
        self._hops = [_HopState(self._hops[0].hop)]
        self._hops[0].history = inputs
        self._recover(0, exc, started, count=False, ban=False, end=self.num_blocks)
        return self._chain_step(wire)

    # -- failover ------------------------------------------------------------------------------

    def _count_failure(self, exc: RemoteError, start: int, end: int) -> None:
        self._failures += 1
        if self._failures > self.policy.max_failovers:
            raise SessionFailed(start, end, [], f"gave up after {self.policy.max_failovers} failovers ({exc})") from exc

    def _routes_from(self, i: int, end: int | None) -> tuple[list[Hop] | None, int, SwarmNotCovering | None]:
        """Cheapest replacement for hops i..j, for the smallest j that works."""
        start = self._hops[i].hop.start
        last_error = None
        targets = [end] if end is not None else [h.hop.end for h in self._hops[i:]]
        for j, target in enumerate(targets):
            try:
                hops = route(
                    self.peers,
                    self.num_blocks,
                    start=start,
                    end=target,
                    model=self.model,
                    exclude=self.bans.banned() | self.distrusted,
                    rtts=self.rtts,
                    failures=self.bans.recent_failures(),
                    policy=self.routing,
                    cache_tokens_needed=self.max_length,
                )
                return hops, i + j, None
            except SwarmNotCovering as exc:
                last_error = exc
        return None, i, last_error

    def _replay_into(self, states: list[_HopState], inputs: list[WireTensor]) -> int:
        """Rebuild the caches of new hops from the inputs the first of them must have seen; return tokens replayed."""
        if self.policy.replay == "prefill" and len(inputs) > 1:
            inputs = [_concat(inputs)]
        for hs in states:
            outs, position = [], 0
            for chunk in inputs:
                outs.append(self._step_hop(hs, chunk, position))
                position += chunk.shape[1]
            inputs = outs
        return sum(c.shape[1] for c in states[0].history) if states else 0

    def _recover(
        self,
        i: int,
        exc: RemoteError,
        started: float,
        *,
        count: bool = True,
        ban: bool = True,
        end: int | None = None,
    ) -> None:
        """Replace hop ``i`` (and as few following hops as needed) by working nodes with rebuilt caches."""
        old = self._hops[i]
        start, old_end = old.hop.start, old.hop.end
        if count:
            self._count_failure(exc, start, old_end)
        if ban:
            self.bans.failed(exc.url or old.url)
        self.node_stats.setdefault(exc.url or old.url, [0, 0, 0, 0.0])[1] += 1
        self._close_hop(old)
        inputs = list(old.history)
        deadline = time.monotonic() + self.policy.wait_for_cover_s
        while True:
            hops, j, why = self._routes_from(i, end)
            if hops is None:
                if time.monotonic() >= deadline:
                    assert why is not None
                    raise SessionFailed(start, old_end, why.uncovered, str(why)) from exc
                time.sleep(self.policy.rediscover_every_s)
                self._rediscover()
                continue
            states = [_HopState(h) for h in hops]
            try:
                for hs in states:
                    self._open(hs)
                replay_started = time.perf_counter()
                self._replay_into(states, inputs)
                replay_s = time.perf_counter() - replay_started
            except RemoteError as again:
                for hs in states:
                    self._close_hop(hs)
                if again.code in CLIENT_ERRORS:
                    raise
                self._count_failure(again, start, old_end)
                self.bans.failed(again.url)
                continue
            for hs in self._hops[i + 1 : j + 1]:
                self._close_hop(hs)
            self._hops[i : j + 1] = states
            self.failovers.append(
                FailoverEvent(
                    url=exc.url or old.url,
                    code=exc.code,
                    position=self.position,
                    blocks=(start, states[-1].hop.end),
                    replacements=[hs.url for hs in states],
                    stall_s=time.perf_counter() - started,
                    replay_s=replay_s,
                    replay_tokens=sum(c.shape[1] for c in inputs),
                )
            )
            return

    def _rediscover(self) -> None:
        if self.discover is None:
            return
        try:
            fresh = self.discover()
        except Exception:  # a tracker hiccup: keep what we know and try again later
            return
        if fresh:
            self.peers = list(fresh)

    # -- closing ----------------------------------------------------------------------------

    def _receipt(self, hs: _HopState) -> tuple[UsageReceipt | None, str]:
        """The signed usage receipt for what ``hs``'s node ran for us (spec §8.3), or ``(None, "")``."""
        peer = hs.hop.peer
        if self.identity is None or hs.tokens <= 0 or not peer.public_key:
            return None, ""
        try:
            receipt = UsageReceipt.new(
                session_id=self.session_id,
                model=self.model or peer.model,
                start_block=peer.start_block,
                end_block=peer.end_block,
                tokens=hs.tokens,
                client_key=key_of(self.identity),
                node_key=signing_key(peer.public_key),
            )
        except ReceiptError:
            return None, ""  # the node announced no usable key: it cannot be paid by receipt
        return receipt, receipt.sign_as_client(self.identity)

    def _close_hop(self, hs: _HopState) -> None:
        if hs.span is None:
            return
        receipt, signature = self._receipt(hs)
        try:
            reply = hs.span.request(
                CloseSession(
                    session_id=self.session_id,
                    receipt=receipt.to_text() if receipt else "",
                    client_signature=signature,
                ),
                timeout=2.0,
            )
            if receipt is not None and isinstance(reply, SessionClosed):
                self._keep_receipt(receipt, signature, reply)
            if isinstance(reply, SessionClosed) and not self.push:  # closed cleanly: the next session may use it
                POOL.give(hs.span, secure=self.secure)
                hs.span = None
                return
        except RemoteError:
            pass
        hs.span.close()
        hs.span = None

    def _keep_receipt(self, receipt: UsageReceipt, signature: str, reply: SessionClosed) -> None:
        if not reply.node_signature:
            self.receipt_errors.append(reply.receipt_error or "the node did not countersign")
            return
        signed = SignedReceipt(receipt, signature, reply.node_signature)
        try:
            signed.verify()
        except ReceiptError as exc:
            self.receipt_errors.append(str(exc))
            return
        self.receipts.append(signed)
        if self.on_receipt is not None:
            self.on_receipt(signed)

    def close(self) -> None:
        """Close the session on every node (freeing their caches) and the connections."""
        for hs in self._hops:
            self._close_hop(hs)
        if self._replays is not None:
            self._replays.close()
        callback, self.on_close = self.on_close, None
        if callback is not None:
            try:
                callback(self)
            except Exception:  # reporting must never break closing
                pass

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
