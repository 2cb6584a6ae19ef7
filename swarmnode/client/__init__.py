"""Client side: connections to nodes, routing, inference sessions, generation and (encoders) embeddings."""

from swarmnode.client.audit import AuditPolicy, EvidenceReporter
from swarmnode.client.config import ClientConfig
from swarmnode.client.embedding import AutoDistributedModel, DistributedEncoderModel
from swarmnode.client.model import (
    AutoDistributedModelForCausalLM,
    DistributedModelForCausalLM,
    GenerationStats,
)
from swarmnode.client.remote import RemoteError, RemoteSpan
from swarmnode.client.routing import SwarmNotCovering, find_chain, probe_peers
from swarmnode.client.session import InferenceSession
from swarmnode.discovery import PeerInfo  # the one peer record, re-exported for client code

__all__ = [
    "AuditPolicy",
    "ClientConfig",
    "EvidenceReporter",
    "AutoDistributedModel",
    "AutoDistributedModelForCausalLM",
    "DistributedEncoderModel",
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
