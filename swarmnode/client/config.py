"""``ClientConfig``: the one set of options a client passes down, from ``from_pretrained`` to every session."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from swarmnode.client.audit import AuditPolicy, EvidenceReporter
from swarmnode.client.failover import FailoverPolicy
from swarmnode.client.routing import RoutingPolicy
from swarmnode.store import Manifest
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import SignedReceipt

HEAD_BACKENDS = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class ClientConfig:
    """How a client uses the swarm: one object for the model, ``from_pretrained`` and every session.

    ``None`` policies mean "the default": each user resolves them (the model prices routes for push
    differently than a bare session does), so a config can be shared before anything is known.
    """

    dtype: torch.dtype = torch.float32  # client-side compute dtype, and the activations' dtype on the wire
    timeout: float = 60.0  # seconds to connect, and to wait for replies whose duration is not known yet
    portal: str | None = None  # portal URL (http://host:8000) whose tracker lists the nodes; None: peers only
    routing: RoutingPolicy | None = None  # how chains are priced (latency/throughput mode, penalties)
    failover: FailoverPolicy | None = None  # retry budget, bans, adaptive timeouts, replay mode
    push: bool = False  # server-to-server push (spec §7): a step goes to the first node only; off while auditing
    identity: NodeIdentity | None = None  # signs usage receipts (spec §8); None: sessions close without one
    on_receipt: Callable[[SignedReceipt], None] | None = None  # called with each countersigned receipt
    secure: bool | None = None  # end-to-end encryption to every node (spec §10); None: to relayed nodes only
    audit: AuditPolicy | None = None  # how to check the nodes (``client/audit.py``); None: no checks
    reporter: EvidenceReporter | None = None  # sends audit evidence and step reports to the portal
    head_backend: str = "auto"  # final norm + LM head on "torch", "onnxruntime" or "auto" (see the model)
    dht: tuple[str, ...] = ()  # DHT bootstrap multiaddrs (docs/dht.md): nodes found there join the portal's/peers'
    manifest: Manifest | None = None  # the model's trusted manifest: nodes whose blocks differ are refused (§4.10)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dht", tuple(self.dht))  # a list given to from_pretrained(dht=[...])
        if self.head_backend not in HEAD_BACKENDS:
            raise ValueError(f"head_backend must be auto, torch or onnxruntime, not {self.head_backend!r}")

    @classmethod
    def build(cls, config: ClientConfig | None = None, **options) -> ClientConfig:
        """``config`` (default: all defaults) with ``options`` (field names) replaced.

        Raises:
            TypeError: an option that is no field of :class:`ClientConfig`.
            ValueError: a bad ``head_backend``.
        """
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unexpected client option(s): {', '.join(unknown)} (see ClientConfig)")
        return dataclasses.replace(config or cls(), **options)

    @property
    def wire_dtype(self) -> str:
        """The wire name of :attr:`dtype`."""
        return tensor_to_wire_dtype(self.dtype)


def tensor_to_wire_dtype(dtype: torch.dtype) -> str:
    """Wire name of a torch dtype."""
    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
