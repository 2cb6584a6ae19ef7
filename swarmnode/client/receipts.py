"""Usage receipts on the client side (spec §8): signed when a hop closes, kept once its node countersigned.

The receipt format and its signatures live in :mod:`swarmnode.trust.receipts`; this module only
decides what a session signs for each node and collects the countersigned copies.
"""

from __future__ import annotations

from collections.abc import Callable

from swarmnode.discovery import PeerInfo
from swarmnode.protocol import SessionClosed
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import ReceiptError, SignedReceipt, UsageReceipt, key_of, signing_key


class ReceiptBook:
    """The receipts of one session: one per node that ran positions for it.

    Args:
        session_id: the session the receipts are for.
        identity: the client's key pair; None: nothing is signed.
        model: the model's name (default: each node's announced model).
        on_receipt: called with each countersigned receipt (e.g. to submit it to the portal).
    """

    def __init__(
        self,
        session_id: str,
        identity: NodeIdentity | None,
        model: str = "",
        on_receipt: Callable[[SignedReceipt], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.identity = identity
        self.model = model
        self.on_receipt = on_receipt
        self.receipts: list[SignedReceipt] = []  # countersigned by the nodes, one per closed hop
        self.errors: list[str] = []  # why a node did not countersign

    def draft(self, peer: PeerInfo, tokens: int) -> tuple[UsageReceipt | None, str]:
        """The client-signed receipt for ``tokens`` positions ``peer`` ran (spec §8.3), or ``(None, "")``."""
        if self.identity is None or tokens <= 0 or not peer.public_key:
            return None, ""
        try:
            receipt = UsageReceipt.new(
                session_id=self.session_id,
                model=self.model or peer.model,
                start_block=peer.start_block,
                end_block=peer.end_block,
                tokens=tokens,
                client_key=key_of(self.identity),
                node_key=signing_key(peer.public_key),
            )
        except ReceiptError:
            return None, ""  # the node announced no usable key: it cannot be paid by receipt
        return receipt, receipt.sign_as_client(self.identity)

    def keep(self, receipt: UsageReceipt, signature: str, reply: SessionClosed) -> None:
        """Keep the node's countersigned copy if its signature verifies; note why not otherwise."""
        if not reply.node_signature:
            self.errors.append(reply.receipt_error or "the node did not countersign")
            return
        signed = SignedReceipt(receipt, signature, reply.node_signature)
        try:
            signed.verify()
        except ReceiptError as exc:
            self.errors.append(str(exc))
            return
        self.receipts.append(signed)
        if self.on_receipt is not None:
            self.on_receipt(signed)
