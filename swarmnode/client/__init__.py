"""Client side: connections to nodes, routing, inference sessions and generation."""

from swarmnode.client.audit import AuditPolicy, EvidenceReporter
from swarmnode.client.model import (
    AutoDistributedModelForCausalLM,
    DistributedModelForCausalLM,
    GenerationStats,
)
from swarmnode.client.remote import PeerInfo, RemoteError, RemoteSpan
from swarmnode.client.routing import SwarmNotCovering, find_chain, probe_peers
from swarmnode.client.session import InferenceSession

__all__ = [
    "AuditPolicy",
    "EvidenceReporter",
    "AutoDistributedModelForCausalLM",
    "DistributedModelForCausalLM",
    "GenerationStats",
    "InferenceSession",
    "PeerInfo",
    "RemoteError",
    "RemoteSpan",
    "SwarmNotCovering",
    "find_chain",
    "probe_peers",
]
