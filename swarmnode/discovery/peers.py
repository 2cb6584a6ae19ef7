"""The one peer record: what a node serves and where it is, as announced, tracked and probed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from swarmnode.protocol import InfoReply
from swarmnode.protocol.relay import relay_key_id

#: What a node announces about itself (to the portal's tracker today, to the DHT later): the
#: record's fields a tracker stores per node. The rest is either the model's (``num_blocks``,
#: ``hidden_size``) or the tracker's own view (``node_id``, ``reputation``, ``state``).
ANNOUNCED_FIELDS = (
    "model",
    "start_block",
    "end_block",
    "url",
    "relay",
    "relay_capacity",
    "backend",
    "device",
    "dtype",
    "throughput",
    "cache_tokens_left",
    "max_session_length",
    "version",
    "public_key",
    "manifest",
    "span_digest",
)


@dataclass(frozen=True)
class PeerInfo:
    """What a node said it serves, plus where it is.

    Built from a node's ``info`` reply (:meth:`from_reply`), a tracker's span list
    (:meth:`from_tracker`), or a node's registration (the portal's tracker); a node announces
    :meth:`announcement`.
    """

    url: str  # ws(s)://HOST:PORT/... or a relay address R/<key_id> (spec §9.1); "" until known
    model: str
    start_block: int
    end_block: int
    num_blocks: int = 0  # blocks of the whole model; 0 = not told (a registration: the tracker knows)
    hidden_size: int = 0  # 0 = not told
    dtype: str = "float32"  # what the node computes in
    cache_tokens_left: int = 0  # room in the node's attention cache
    max_session_length: int = 8192
    throughput: float = 0.0  # tokens/s of one-token steps through the whole span; 0 = unknown
    prefill_throughput: float = 0.0  # tokens/s of a long prefill through the span; 0 = unknown
    state: str = "online"  # "draining": serves its sessions but takes no new ones
    relay: bool = False  # reachable only through a relay (an extra hop)
    public_key: str = ""  # "ed25519:...,x25519:..." (spec §1.4): names the node in usage receipts (§8),
    # agrees end-to-end session keys (§10), checks its signed results (§11)
    node_id: int = 0  # the tracker's id of the node (0: not from a tracker); evidence reports name it
    reputation: float | None = None  # the tracker's score in [0, 1]; None: unknown (no tracker)
    backend: str = ""  # the node's compute backend ("torch", "onnxruntime"); "" when not told
    device: str = ""  # "cpu", "cuda:0", ...; "" when not told
    version: str = ""  # the node's software version; "" when not told
    relay_capacity: int = 0  # nodes behind NAT this node also relays for (spec §9)
    manifest: str = ""  # identity of the signed manifest the node's span was loaded from; "" = none claimed
    span_digest: str = ""  # SHA-256 of its loaded blocks' hashes (swarmnode.store.span_digest); "" = unknown

    @property
    def length(self) -> int:
        """Number of blocks served."""
        return self.end_block - self.start_block

    @classmethod
    def from_reply(cls, url: str, reply: InfoReply) -> PeerInfo:
        """Build from an :class:`InfoReply`."""
        names = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(reply)}
        return cls(
            url=url, relay=relay_key_id(url) is not None, **{n: getattr(reply, n) for n in names - {"id", "relay"}}
        )

    @classmethod
    def from_tracker(cls, span: dict[str, Any]) -> PeerInfo:
        """Build from one entry of a tracker's span list (``/api/v1/models/<model>/spans/``).

        Raises:
            KeyError, TypeError, ValueError: the entry lacks a field or has one of the wrong type.
        """
        return cls(
            url=str(span["url"]),
            model=str(span["model"]),
            start_block=int(span["start_block"]),
            end_block=int(span["end_block"]),
            num_blocks=int(span["num_blocks"]),
            hidden_size=int(span["hidden_size"]),
            dtype=str(span["dtype"]),
            cache_tokens_left=int(span["cache_tokens_left"]),
            max_session_length=int(span["max_session_length"]),
            throughput=float(span.get("throughput") or 0.0),
            relay=bool(span.get("relay")),
            public_key=str(span.get("public_key") or ""),
            manifest=str(span.get("manifest") or ""),
            span_digest=str(span.get("span_digest") or ""),
            node_id=int(span.get("id") or 0),
            reputation=float(span["reputation"]) if span.get("reputation") is not None else None,
        )

    def announcement(self) -> dict[str, Any]:
        """What a node announces about itself: the :data:`ANNOUNCED_FIELDS` of this record."""
        return {name: getattr(self, name) for name in ANNOUNCED_FIELDS}
