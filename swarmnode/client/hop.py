"""One hop of an inference session: a node's connection, what the client sent it, its open/step/close.

An :class:`~swarmnode.client.session.InferenceSession` keeps one :class:`HopSession` per span of
its chain. The hop keeps every input it was sent (failover replays them into a replacement), the
positions its node ran (the usage receipt's count), and, while auditing, the outputs not yet
compared against a replay.
"""

from __future__ import annotations

import numpy as np

from swarmnode.client.receipts import ReceiptBook
from swarmnode.client.remote import POOL, RemoteError, RemoteSpan
from swarmnode.client.routing import Hop
from swarmnode.discovery import PeerInfo
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


def check_reply(url: str, out: WireTensor | None, sent: WireTensor) -> WireTensor:
    """``out`` if it is a plausible step result for ``sent`` (same shape and dtype, finite).

    Raises:
        RemoteError: ``bad_reply`` otherwise.
    """
    if out is None or out.shape != sent.shape or out.dtype != sent.dtype:
        raise RemoteError(url, "bad_reply", "step result missing or of the wrong shape")
    if not all_finite(out):
        raise RemoteError(url, "bad_reply", "step result contains NaN or infinite values")
    return out


def concat(chunks: list[WireTensor]) -> WireTensor:
    """Input chunks joined along the positions: ``[(B, T1, H), (B, T2, H)] -> (B, T1 + T2, H)``."""
    return tensor_from_numpy(np.concatenate([c.to_numpy() for c in chunks], axis=1), chunks[0].dtype)


class HopSession:
    """One node's part of a session: its connection, the inputs sent to it, and their bookkeeping.

    Args:
        hop: the node and the blocks it runs for this session.
        history: inputs the node must be brought up to (a replacement's caches are rebuilt from them).
    """

    def __init__(self, hop: Hop, history: list[WireTensor] | None = None) -> None:
        self.hop = hop
        self.span: RemoteSpan | None = None  # open while the node holds our cache
        self.history: list[WireTensor] = list(history or [])  # inputs sent, in order
        self.tokens = 0  # positions this node ran for us (B x T summed): the usage receipt's count (spec §8.2)
        self.served: int | None = None  # the node's own count of those positions, from its SessionClosed reply
        # Audits: outputs not yet compared against a replay, as (position, input, output, signature).
        self.unaudited: list[tuple[int, WireTensor, WireTensor, str]] = []

    @property
    def url(self) -> str:
        """The node's URL."""
        return self.hop.url

    @property
    def push_address(self) -> str:
        """The node as a push ``route`` names it (spec §7.2): its URL, then ``#`` and its announced public key,
        which the node before it checks the link against (§7.6)."""
        key = self.hop.peer.public_key
        return f"{self.url}#{key}" if key else self.url

    @property
    def peer(self) -> PeerInfo:
        """The node as it announced itself."""
        return self.hop.peer

    @property
    def blocks(self) -> tuple[int, int]:
        """The blocks the node signs for: its whole announced span."""
        return self.hop.peer.start_block, self.hop.peer.end_block

    def chunks_before(self, position: int) -> int:
        """How many of the input chunks lie entirely before cache position ``position``."""
        total, n = 0, 0
        for chunk in self.history:
            if total + chunk.shape[1] > position:
                break
            total += chunk.shape[1]
            n += 1
        return n

    def open(self, opening: OpenSession, timeout: float, secure: bool | None) -> None:
        """Open the session on the node (a pooled connection if one is free).

        Raises:
            RemoteError: the node could not be reached or refused.
        """
        self.span, _ = POOL.open(
            self.url,
            timeout,
            lambda span: span.request(opening, timeout=timeout),
            public_key=self.peer.public_key,
            secure=secure,
        )

    def step(
        self, session_id: str, wire: WireTensor, position: int, *, timeout: float, signed: bool
    ) -> tuple[WireTensor, StepResult]:
        """Run ``wire`` (B, T, H) at cache ``position`` on the node; nothing is recorded yet (see :meth:`record`).

        Raises:
            RemoteError: the node failed, or its result is missing, misshapen or not finite.
        """
        assert self.span is not None
        reply = self.span.request(
            Step(session_id=session_id, position=position, hidden=wire, skip_signature=not signed), timeout=timeout
        )
        out = check_reply(self.url, reply.hidden if isinstance(reply, StepResult) else None, wire)
        return out, reply

    def record(self, wire: WireTensor, out: WireTensor, position: int, signature: str, audited: bool) -> None:
        """Note an accepted step: its input (for replays), its positions (for the receipt), its output (audits)."""
        self.history.append(wire)
        self.tokens += wire.shape[0] * wire.shape[1]
        if audited:
            self.unaudited.append((position, wire, out, signature))

    def close(self, session_id: str, receipts: ReceiptBook | None, *, reuse: bool, secure: bool | None) -> None:
        """Close the session on the node with a signed usage receipt (when ``receipts`` can sign one).

        The connection goes back to the pool when the node closed cleanly and ``reuse`` holds;
        it is closed otherwise. Never raises.
        """
        if self.span is None:
            return
        receipt, signature = receipts.draft(self.peer, self.tokens) if receipts is not None else (None, "")
        try:
            reply = self.span.request(
                CloseSession(
                    session_id=session_id,
                    receipt=receipt.to_text() if receipt else "",
                    client_signature=signature,
                ),
                timeout=2.0,
            )
            if isinstance(reply, SessionClosed):
                self.served = reply.tokens
            if receipt is not None and isinstance(reply, SessionClosed):
                assert receipts is not None
                receipts.keep(receipt, signature, reply)
            if isinstance(reply, SessionClosed) and reuse:  # closed cleanly: the next session may use it
                POOL.give(self.span, secure=secure)
                self.span = None
                return
        except RemoteError:
            pass
        self.span.close()
        self.span = None
