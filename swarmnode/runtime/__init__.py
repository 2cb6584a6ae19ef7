"""Executing a span: backends, the KV-cache pool with its token budget, and session bookkeeping."""

from swarmnode.runtime.backend import TorchBackend, tensor_to_wire, wire_to_tensor
from swarmnode.runtime.cache import CachePool, OutOfCache, SessionState

__all__ = ["CachePool", "OutOfCache", "SessionState", "TorchBackend", "tensor_to_wire", "wire_to_tensor"]
