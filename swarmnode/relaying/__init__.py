"""What every relay shares, the node's (``swarmnode.server.relay_hub``) and the portal's (``portal.relay``).

Public: :func:`check_dial_back` (spec §9.3) and the token buckets that bound a relay's bandwidth and
frame rate (:class:`TokenBucket`, :func:`throttle`, spec §9.6). The wire envelope itself is
``swarmnode.protocol.relay`` (sans-I/O).
"""

from swarmnode.relaying.dial_back import check_dial_back
from swarmnode.relaying.throttle import TokenBucket, throttle

__all__ = ["TokenBucket", "check_dial_back", "throttle"]
