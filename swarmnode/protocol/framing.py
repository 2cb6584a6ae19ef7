"""How much one frame from a peer may hold, checked while it is unpacked (spec §6.1-§6.3).

msgpack turns one byte into a whole Python object (an empty map: 1 byte on the wire, ~64 bytes
as a dict), so a frame is bounded twice: by its size before anything is parsed, and by its shape
while it is unpacked. Every msgpack frame a peer sends (messages, relay envelopes, sealed frames,
usage receipts) goes through :func:`unpack`; the limits below fit the largest legitimate one.
"""

from __future__ import annotations

import msgpack

from swarmnode.protocol.errors import ProtocolError

# Each per-container limit leaves room above the largest legitimate value, so that a field a little
# too long still gets its precise error (``bad_field``) from the field checks after unpacking.

#: Keys in one map: an ``info_reply``, the largest message, has 19 (unknown fields are allowed, §2.4).
MAX_MAP_ITEMS = 64
#: Items in one array: a ``route`` (§7) has at most 64 URLs, a tensor shape at most 4 dimensions.
MAX_ARRAY_ITEMS = 128
#: Bytes in one string: 4096 characters (§2.4) of UTF-8 take at most 4 bytes each.
MAX_STR_BYTES = 4 * 4096
#: Maps and arrays in one frame, nested ones included: a pushed ``step`` has 4 (the frame, its
#: tensor, the tensor's shape, the route). Bounds what many small containers can cost, which the
#: per-container limits alone do not (a tree of 64-item arrays, 4 deep, is 16.7 M empty arrays).
MAX_CONTAINERS = 16
#: Bytes a websocket message may carry beyond a frame of ``max_frame_bytes``: a §10.3 seal (~60
#: bytes) and a §9 relay envelope (~50 bytes) around it, with room to spare.
FRAME_SLACK = 1024


def message_bound(max_frame_bytes: int) -> int:
    """The largest websocket message worth reading when frames are at most ``max_frame_bytes``
    (what a node's server, a client and a push link give the websocket layer as ``max_size``)."""
    return max_frame_bytes + FRAME_SLACK


def _refuse_ext(code: int, data: bytes) -> object:
    raise ProtocolError("bad_frame", "msgpack extension types are not allowed")


def unpack(frame: bytes, max_bin_bytes: int) -> object:
    """Unpack one msgpack frame within the limits of this module.

    Args:
        frame: the bytes a peer sent (already checked against the frame size limit).
        max_bin_bytes: the largest binary value allowed (a tensor's data: the frame limit).

    Returns:
        The unpacked object (maps have string keys; arrays are lists).

    Raises:
        ProtocolError: ``bad_frame`` for anything that is not one msgpack object within the limits.
    """
    containers = 0

    def count(container):
        nonlocal containers
        containers += 1
        if containers > MAX_CONTAINERS:
            raise ProtocolError("bad_frame", f"a frame holds at most {MAX_CONTAINERS} maps and arrays")
        return container

    try:
        return msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            object_hook=count,
            list_hook=count,
            max_map_len=MAX_MAP_ITEMS,
            max_array_len=MAX_ARRAY_ITEMS,
            max_str_len=MAX_STR_BYTES,
            max_bin_len=max_bin_bytes,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # a length over a limit, or garbage (msgpack raises several unrelated types)
        detail = f"{type(exc).__name__}: {exc}"[:120]
        raise ProtocolError("bad_frame", f"not a msgpack frame within the limits of §6.2 ({detail})") from None
