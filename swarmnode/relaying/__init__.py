"""What every relay shares, the node's (``swarmnode.server.relay_hub``) and the portal's (``portal.relay``).

Public: :func:`check_dial_back` (spec §9.3) and :func:`dial_target` / :func:`is_public_address` (which
address a server may dial on a peer's word), and the token buckets that bound a relay's bandwidth and
frame rate (:class:`TokenBucket`, :func:`throttle`, spec §9.6). A node's choice among relays, and
which of them may see its token, is :mod:`swarmnode.relaying.choice`. The wire envelope itself is
``swarmnode.protocol.relay`` (sans-I/O).
"""

from swarmnode.relaying.dial_back import check_dial_back
from swarmnode.relaying.peer_address import (
    DialRefused,
    check_private,
    dial_target,
    is_public_address,
    serves_privately,
)
from swarmnode.relaying.throttle import TokenBucket, throttle

__all__ = [
    "DialRefused",
    "TokenBucket",
    "check_dial_back",
    "check_private",
    "dial_target",
    "is_public_address",
    "serves_privately",
    "throttle",
]
