"""An inference session across a chain of nodes, each keeping its part of the KV cache, with failover.

:class:`InferenceSession` steps hidden states through its chain, one :class:`HopSession` per node
(``client/hop.py``), either hop by hop or pushed from node to node (spec §7). A failing node is
replaced and its cache rebuilt from the inputs the session kept (``client/recovery.py``). With an
:class:`~swarmnode.client.audit.AuditPolicy`, every hop's result is also checked and, on a
schedule, replayed on an independent route (``client/auditing.py``). Closing a hop sends a signed
usage receipt when the client has an identity (``client/receipts.py``).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable

import torch

from swarmnode.client.audit import AuditPolicy, Evidence
from swarmnode.client.auditing import AuditRollback, AuditStats, SessionAuditor
from swarmnode.client.config import ClientConfig
from swarmnode.client.failover import BanList, FailoverPolicy, StepTimer
from swarmnode.client.hop import HopSession, check_reply
from swarmnode.client.receipts import ReceiptBook
from swarmnode.client.recovery import CLIENT_ERRORS, FailoverEvent, Recovery, SessionFailed
from swarmnode.client.remote import RemoteError
from swarmnode.client.routing import Hop, RoutingPolicy
from swarmnode.discovery import PeerInfo
from swarmnode.models.wire import tensor_to_wire, wire_to_tensor
from swarmnode.protocol import OpenSession, Step, StepResult, WireTensor

__all__ = [
    "CLIENT_ERRORS",
    "AuditRollback",
    "AuditStats",
    "FailoverEvent",
    "HopSession",
    "InferenceSession",
    "SessionFailed",
]


class InferenceSession:
    """Push hidden states through every span of a chain, keeping a cache on each node, surviving failures.

    Args:
        chain: the initial route: whole spans (:class:`PeerInfo`) or :class:`Hop` s, in block order.
        max_length: most tokens (prompt + generated) the session will hold.
        wire_dtype: dtype of activations on the wire (default: ``config.dtype``'s).
        timeout: seconds to wait to connect, and for replies whose duration is not known yet
            (default: ``config.timeout``).
        config: the client's options (:class:`ClientConfig`); ``routing``, ``failover``, ``push``,
            ``identity``, ``on_receipt``, ``secure`` and ``audit`` apply here. With ``identity``, closing
            the session on a node sends a signed usage receipt and keeps the node's countersigned copy in
            :attr:`receipts` (spec §8). ``push`` is ignored when auditing: audits need every hop's inputs
            and outputs, which push hides from the client.
        peers: every known node, spares included (default: the chain alone, so no failover target).
        num_blocks: blocks of the model (default: where the chain ends).
        model: the model's name, to skip nodes of other models.
        discover: returns a fresh peer list (tracker or static peers), called while no node covers a
            failed range.
        bans, timer: shared failure state (a model keeps one across sessions).
        rtts: smoothed RTTs per URL for routing.
        distrusted: URLs caught lying, never used again (shared by a model's sessions; grows here).
        on_evidence: called with every audit's :class:`Evidence` (e.g. an ``EvidenceReporter``).
        on_close: called once with the session when it closes (e.g. to report :attr:`node_stats`).
        prefix_salt: nodes reuse first-prompt prefixes among sessions with this salt (spec §4.9); "": none.
        **options: :class:`ClientConfig` fields, replacing those of ``config`` (e.g. ``audit=...``).

    Raises:
        RemoteError: no chain could be opened (``SessionFailed`` once failover gives up).
        TypeError: an option that is no :class:`ClientConfig` field.
    """

    def __init__(
        self,
        chain: list[PeerInfo] | list[Hop],
        max_length: int,
        wire_dtype: str | None = None,
        timeout: float | None = None,
        *,
        config: ClientConfig | None = None,
        peers: list[PeerInfo] | None = None,
        num_blocks: int | None = None,
        model: str = "",
        discover: Callable[[], list[PeerInfo]] | None = None,
        bans: BanList | None = None,
        timer: StepTimer | None = None,
        rtts: dict[str, float] | None = None,
        distrusted: set[str] | None = None,
        on_evidence: Callable[[Evidence], None] | None = None,
        on_close: Callable[[InferenceSession], None] | None = None,
        prefix_salt: str = "",
        **options,
    ) -> None:
        config = ClientConfig.build(config, **options)
        hops = [h if isinstance(h, Hop) else Hop(h, h.start_block, h.end_block) for h in chain]
        self.session_id = uuid.uuid4().hex
        self.max_length = max_length
        self.wire_dtype = wire_dtype or config.wire_dtype
        self.timeout = config.timeout if timeout is None else timeout
        self.position = 0
        self.steps = 0
        # Every token of the conversation so far, when ``generate`` runs in this session (Petals' API): the
        # nodes hold all but the last, so the next call runs only the tokens after ``position``.
        self.output_ids: torch.Tensor | None = None  # (B, T)
        self.peers = list(peers) if peers is not None else [h.peer for h in hops]
        self.num_blocks = num_blocks if num_blocks is not None else hops[-1].end
        self.model = model
        self.discover = discover
        self.policy = config.failover or FailoverPolicy(first_step_timeout_s=self.timeout)
        self.bans = bans or BanList(self.policy)
        self.timer = timer or StepTimer(self.policy)
        self.rtts = rtts or {}
        self.routing = config.routing or RoutingPolicy()
        self.secure = config.secure
        self.audit = config.audit or AuditPolicy()
        self.distrusted = distrusted if distrusted is not None else set()
        self.push = config.push and not self.audit.enabled
        self.push_key = secrets.token_hex(16) if self.push else ""
        self.prefix_salt = prefix_salt
        self.on_close = on_close
        self.book = ReceiptBook(self.session_id, config.identity, model, config.on_receipt)
        self.receipts = self.book.receipts  # countersigned by the nodes, one per closed hop (§8)
        self.receipt_errors = self.book.errors  # why a node did not countersign
        self.auditor = SessionAuditor(self, self.audit, on_evidence)
        self.audit_stats = self.auditor.stats
        self.verified_position = 0  # verified mode: every hop's output before this position passed an audit
        self.recovery = Recovery(self)
        self.failovers: list[FailoverEvent] = []
        self.cached_tokens: dict[str, int] = {}  # per node URL: prompt positions it reused (§4.9)
        # Per node URL: [steps served, steps failed, one-token steps timed, their seconds] (reputation reports).
        self.node_stats: dict[str, list[float]] = {}
        self.hop_sessions = [HopSession(h) for h in hops]  # in block order; failover replaces entries
        try:
            i = 0
            while i < len(self.hop_sessions):
                try:
                    self.open_hop(self.hop_sessions[i])
                    i += 1
                except RemoteError as exc:
                    self.recovery.recover(i, exc, time.perf_counter())
        except BaseException:
            self.close()
            raise

    @property
    def chain(self) -> list[PeerInfo]:
        """The nodes in use now, in block order."""
        return [h.peer for h in self.hop_sessions]

    @property
    def hops(self) -> list[Hop]:
        """The hops in use now, in block order."""
        return [h.hop for h in self.hop_sessions]

    @property
    def _hops(self) -> list[HopSession]:  # the name tests and tools used before HopSession
        return self.hop_sessions

    # -- steps ------------------------------------------------------------------------------

    def step(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        """Run new positions through all spans; their keys/values stay in the nodes' caches.

        A failing node is replaced transparently (see ``client/recovery.py``).

        Raises:
            RemoteError: a node refused the request itself (e.g. ``session_full``), or
                :class:`SessionFailed` when failover gives up.
            AuditRollback: verified mode, an audit failed (see :meth:`audit_now`).
        """
        if hidden.shape[1] == 0:  # nothing to run (Petals' callers pass empty steps)
            return hidden.detach().clone()
        wire = tensor_to_wire(hidden, self.wire_dtype)
        out = self._push_step(wire) if self.push and len(self.hop_sessions) > 1 else self._chain_step(wire)
        self.position += hidden.shape[1]
        self.steps += 1
        if self.auditor.due():
            self.audit_now()
        return wire_to_tensor(out, hidden.dtype)

    def audit_now(self) -> None:
        """Replay every hop's inputs on an independent route and compare (see ``swarmnode/client/audit.py``).

        In ``sample`` mode a caught node is replaced (its hop and the later ones rebuilt) and the session
        goes on; in ``verified`` mode the session rolls back to the last verified position.

        Raises:
            AuditRollback: verified mode, an audit failed (the session is rebuilt at ``position``).
            RemoteError: verified mode, some hop has no independent route to audit it.
        """
        self.auditor.audit_round()

    def _chain_step(self, wire: WireTensor) -> WireTensor:
        i = 0
        while i < len(self.hop_sessions):
            started = time.perf_counter()
            try:
                out = self.step_hop(self.hop_sessions[i], wire, self.position)
            except RemoteError as exc:
                if exc.code in CLIENT_ERRORS:
                    raise
                self.recovery.recover(i, exc, started)
                continue  # the same input into the replacement, at the same position
            wire = out
            i += 1
        return wire

    def _push_step(self, wire: WireTensor) -> WireTensor:
        """One step sent to the first node only; the last node sends the result back (spec §7)."""
        started = time.perf_counter()
        hops = self.hop_sessions
        first, last = hops[0], hops[-1]
        assert first.span is not None and last.span is not None
        tokens = wire.shape[1]
        deadline = started + sum(self.timer.timeout(h.url, tokens) for h in hops)
        failed: RemoteError | None = None
        try:
            rid = first.span.send(
                Step(
                    session_id=self.session_id,
                    position=self.position,
                    hidden=wire,
                    push_key=self.push_key,
                    route=tuple(h.push_address for h in hops[1:]),
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
                    out = check_reply(last.url, reply.hidden, wire)
                except RemoteError as exc:
                    failed = exc
                    break
                for h in hops:
                    self.timer.record(h.url, tokens, (time.perf_counter() - started) / len(hops))
                    self.bans.succeeded(h.url)
                    h.tokens += wire.shape[0] * tokens
                first.history.append(wire)  # later hops' inputs never reach the client
                return out
            for h in hops[:-1]:  # an error anywhere on the route is reported to us (§7.3)
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
        self.recovery.rebuild_all(culprit, failed, started)
        return self._chain_step(wire)

    # -- one hop (also used by recovery, so that replays are timed, counted and checked) -------

    def open_hop(self, hs: HopSession) -> None:
        """Open this session on ``hs``'s node.

        Raises:
            RemoteError: the node could not be reached or refused.
        """
        opening = OpenSession(
            session_id=self.session_id,
            max_length=self.max_length,
            dtype=self.wire_dtype,
            push_key=self.push_key,
            prefix_salt=self.prefix_salt,
        )
        hs.open(opening, min(self.timeout, 10.0), self.secure)

    def step_hop(self, hs: HopSession, wire: WireTensor, position: int) -> WireTensor:
        """Run ``wire`` (B, T, H) at ``position`` on one hop: timed, counted, checked when auditing.

        Raises:
            RemoteError: the node failed (``AuditFailed`` if its result failed the checks).
        """
        tokens = wire.shape[1]
        started = time.perf_counter()
        signed = self.auditor.enabled
        out, reply = hs.step(self.session_id, wire, position, timeout=self.timer.timeout(hs.url, tokens), signed=signed)
        if position == 0:
            self.cached_tokens[hs.url] = reply.cached_tokens
        if signed:
            self.auditor.check_step(hs, wire, out, reply.signature, position)
        elapsed = time.perf_counter() - started
        self.timer.record(hs.url, tokens, elapsed)
        counts = self.node_stats.setdefault(hs.url, [0, 0, 0, 0.0])
        counts[0] += 1
        if tokens == 1:
            counts[2] += 1
            counts[3] += elapsed
        self.bans.succeeded(hs.url)
        hs.record(wire, out, position, reply.signature, audited=signed)
        return out

    def close_hop(self, hs: HopSession) -> None:
        """Close this session on ``hs``'s node, with a usage receipt (never raises for the node's sake)."""
        hs.close(self.session_id, self.book, reuse=not self.push, secure=self.secure)

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the session on every node (freeing their caches) and the connections."""
        for hs in self.hop_sessions:
            self.close_hop(hs)
        self.auditor.close()
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
