"""An inference session across a chain of nodes, each keeping its part of the KV cache, with failover.

The client keeps, per hop, every input it has sent in this session. When a node fails
(disconnect, timeout, error reply, output of the wrong shape or with NaN), the session bans it,
re-routes only the failed block range, replays the kept inputs into the replacement nodes to
rebuild their caches, and carries on from the same position. With ``replay="exact"`` the
replacement sees exactly the steps the failed node saw, so its cache (and every later token) is
bit-identical to an undisturbed run.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from swarmnode.client.failover import BanList, FailoverPolicy, StepTimer
from swarmnode.client.remote import PeerInfo, RemoteError, RemoteSpan
from swarmnode.client.routing import Hop, RoutingPolicy, SwarmNotCovering, route
from swarmnode.identity import NodeIdentity
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
from swarmnode.receipts import ReceiptError, SignedReceipt, UsageReceipt, key_of, signing_key
from swarmnode.runtime.backend import tensor_to_wire, wire_to_tensor

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


@dataclass
class _HopState:
    hop: Hop
    span: RemoteSpan | None = None
    history: list[WireTensor] = field(default_factory=list)  # inputs sent, in order (None-free)
    tokens: int = 0  # positions this node ran for us (B x T summed): the usage receipt's count (spec §8.2)

    @property
    def url(self) -> str:
        return self.hop.url


def _concat(chunks: list[WireTensor]) -> WireTensor:
    return tensor_from_numpy(np.concatenate([c.to_numpy() for c in chunks], axis=1), chunks[0].dtype)


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
        push: server-to-server push (spec §7): each step goes to the first node only.
        identity: the client's key pair; with it, closing the session on a node sends a signed usage
            receipt and keeps the node's countersigned copy in :attr:`receipts` (spec §8).
        on_receipt: called with each countersigned receipt (e.g. to submit it to the portal).
        secure: end-to-end encryption to every node (spec §10); ``None``: only to relayed nodes.

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
    ) -> None:
        self.identity = identity
        self.on_receipt = on_receipt
        self.receipts: list[SignedReceipt] = []  # countersigned by the nodes, one per closed hop (§8)
        self.receipt_errors: list[str] = []  # why a node did not countersign
        hops = [h if isinstance(h, Hop) else Hop(h, h.start_block, h.end_block) for h in chain]
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
        hs.span = RemoteSpan(
            hs.url, timeout=min(self.timeout, 10.0), public_key=hs.hop.peer.public_key, secure=self.secure
        )
        hs.span.request(
            OpenSession(
                session_id=self.session_id, max_length=self.max_length, dtype=self.wire_dtype, push_key=self.push_key
            ),
            timeout=min(self.timeout, 10.0),
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
            Step(session_id=self.session_id, position=position, hidden=wire), timeout=self.timer.timeout(hs.url, tokens)
        )
        out = self._check(hs.url, reply.hidden if isinstance(reply, StepResult) else None, wire)
        self.timer.record(hs.url, tokens, time.perf_counter() - started)
        self.bans.succeeded(hs.url)
        hs.history.append(wire)
        hs.tokens += wire.shape[0] * wire.shape[1]
        return out

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
        return wire_to_tensor(out, hidden.dtype)

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
                    exclude=self.bans.banned(),
                    rtts=self.rtts,
                    failures=self.bans.recent_failures(),
                    policy=self.routing,
                    cache_tokens_needed=self.max_length,
                )
                return hops, i + j, None
            except SwarmNotCovering as exc:
                last_error = exc
        return None, i, last_error

    def _replay(self, states: list[_HopState], inputs: list[WireTensor]) -> int:
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
                self._replay(states, inputs)
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

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
