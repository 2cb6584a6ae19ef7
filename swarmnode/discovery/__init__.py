"""Where peers are found, shared by nodes and clients (and read by the portal).

One record type, :class:`PeerInfo`, whichever source it comes from: the portal's tracker
(:func:`fetch_spans`), the peers themselves (:func:`probe_peers`, an ``info`` request), or both
merged (:func:`swarm_view`). Imports nothing of ``server``, ``runtime`` or ``client``.
"""

from swarmnode.discovery.peers import ANNOUNCED_FIELDS, PeerInfo
from swarmnode.discovery.probe import ask_info, dialable, pin_to_tracker, probe_peers, swarm_view
from swarmnode.discovery.tracker import TrackerError, fetch_spans, spans_url

__all__ = [
    "ANNOUNCED_FIELDS",
    "PeerInfo",
    "TrackerError",
    "ask_info",
    "dialable",
    "fetch_spans",
    "pin_to_tracker",
    "probe_peers",
    "spans_url",
    "swarm_view",
]
