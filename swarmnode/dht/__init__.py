"""Peer discovery without a central server: signed node records in hivemind's Kademlia DHT.

The interface is small: :func:`open_dht` joins (or starts) a DHT and returns a
:class:`~swarmnode.dht.engine.DHTDiscovery` with ``announce(record)``, ``lookup(model, blocks)`` and
``watch(model, blocks)``; :mod:`swarmnode.dht.records` signs and verifies records;
:mod:`swarmnode.dht.fallback` keeps the last known good peers on disk. Importing this package does not import
hivemind: only :func:`open_dht` does, and it raises :class:`DHTUnavailable` where hivemind cannot run
(Windows: no wheel; or not installed: ``pip install swarmnode[dht]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from swarmnode.dht.records import InvalidRecord, block_key, node_id, signed, verify

if TYPE_CHECKING:
    from swarmnode.dht.engine import DHTDiscovery

__all__ = ["DHTUnavailable", "InvalidRecord", "block_key", "node_id", "open_dht", "signed", "verify"]


class DHTUnavailable(RuntimeError):
    """The DHT engine cannot be loaded here (hivemind not installed, or no build for this platform)."""


def open_dht(initial_peers=(), **options) -> DHTDiscovery:
    """Join the DHT through ``initial_peers`` (multiaddrs); none: start a first peer.

    Args:
        **options: as :class:`~swarmnode.dht.engine.DHTDiscovery` (host, port, client_mode, ...).

    Raises:
        DHTUnavailable: hivemind cannot be imported (the message says why and what to do).
        OSError: no initial peer answered.
    """
    try:
        from swarmnode.dht.engine import DHTDiscovery
    except Exception as exc:  # not installed, no build for this platform, a dependency missing or broken
        raise DHTUnavailable(
            f"the DHT engine (hivemind) cannot be loaded: {exc}; install it with `pip install swarmnode[dht]`"
            " (Linux and macOS only)"
        ) from None
    return DHTDiscovery(initial_peers, **options)
