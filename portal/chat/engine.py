"""Moved to :mod:`portal.generation`; kept only for ``bench/chat_concurrency.py``, which imports it (delete
this file once that import reads ``from portal.generation.pool import GATEWAY_FAILOVER``)."""

from portal.generation.pool import GATEWAY_FAILOVER

__all__ = ["GATEWAY_FAILOVER"]
