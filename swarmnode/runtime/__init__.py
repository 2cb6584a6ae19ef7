"""Executing a span: backends, the KV-cache pool with its token budget, and session bookkeeping."""

from swarmnode.runtime.backend import TorchBackend
from swarmnode.runtime.cache import CachePool, OutOfCache, SessionState

__all__ = ["CachePool", "OutOfCache", "SessionState", "TorchBackend"]
