"""Hypothesis strategies for what a stranger can put on the wire: arbitrary bytes, msgpack of the wrong
shape, headers that declare huge sizes, tensors of the wrong dtype or with NaNs, and valid frames with
bits flipped, bytes cut off or inserted."""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import strategies as st

from swarmnode.protocol import MESSAGE_TYPES, WireTensor
from swarmnode.protocol.messages import _spec

# Every msgpack header that carries a length, with the length's width (spec §6.2 must bound them all).
_SIZED_HEADERS = {
    b"\xc4": 1, b"\xc5": 2, b"\xc6": 4,  # bin 8/16/32
    b"\xd9": 1, b"\xda": 2, b"\xdb": 4,  # str 8/16/32
    b"\xdc": 2, b"\xdd": 4,  # array 16/32
    b"\xde": 2, b"\xdf": 4,  # map 16/32
    b"\xc7": 1, b"\xc8": 2, b"\xc9": 4,  # ext 8/16/32
}  # fmt: skip

arbitrary_bytes = st.binary(max_size=2048)


def _declare(prefix: bytes, header: bytes, size: int, tail: bytes) -> bytes:
    width = _SIZED_HEADERS[header]
    return prefix + header + (size % (1 << (8 * width))).to_bytes(width, "big") + tail


#: A header that declares up to 4 GiB followed by far fewer bytes, alone or inside a frame-like prefix.
huge_declared = st.builds(
    _declare,
    st.sampled_from([b"", b"\x81\xa4data", b"\x83\xa1v\x01\xa4type\xa4step\xa6hidden", b"\x91", b"\x93\x01\x02"]),
    st.sampled_from(sorted(_SIZED_HEADERS)),
    st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([2**32 - 1, 2**31, 2**16 - 1, 64 * 2**20 + 1])),
    st.binary(max_size=64),
)

_ints = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 2**62, -(2**62), 2**63 - 1, 2**64 - 1, -(2**63)]),
)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    _ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=64),
)
#: Any msgpack value (keys of maps are usually, not always, strings).
values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers(-5, 5)), inner, max_size=6),
    ),
    max_leaves=12,
)

_DTYPES = ["float32", "float16", "bfloat16"]


def _float_bytes(dtype: str, xs: list[float]) -> bytes:
    if dtype == "bfloat16":
        return (np.array(xs, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
    with np.errstate(over="ignore"):  # a float32 beyond float16's range becomes inf: one more non-finite case
        return np.array(xs, dtype="<f4").astype("<f2" if dtype == "float16" else "<f4").tobytes()


@st.composite
def valid_tensors(draw, max_dims: int = 4, nan: bool = False) -> WireTensor:
    """A tensor whose bytes match its shape; with ``nan`` its values may be NaN or infinite."""
    dtype = draw(st.sampled_from(_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=max_dims)))
    n = int(np.prod(shape))
    xs = draw(st.lists(st.floats(allow_nan=nan, allow_infinity=nan, width=32), min_size=n, max_size=n))
    return WireTensor(dtype, shape, _float_bytes(dtype, xs))


#: Tensor-like maps a peer may send: wrong dtypes, shapes that lie about the data, negative or huge dims.
tensor_maps = st.one_of(
    valid_tensors(nan=True).map(WireTensor.to_wire),
    st.fixed_dictionaries(
        {},
        optional={
            "dtype": st.one_of(st.sampled_from([*_DTYPES, "float64", "int8", "uint16", "object", ""]), values),
            "shape": st.one_of(st.lists(_ints, max_size=6), values),
            "data": st.one_of(st.binary(max_size=256), values),
        },
    ),
)

_FIELD_VALUES = {
    int: st.integers(-(2**62) + 1, 2**62 - 1),
    str: st.text(max_size=60),
    float: st.floats(allow_nan=False, allow_infinity=False),
    bool: st.booleans(),
    tuple: st.lists(st.text(max_size=40), max_size=64).map(tuple),
    list: st.lists(st.integers(0, 2**31 - 1), max_size=64).map(tuple),  # the tuple[int, ...] marker
    WireTensor: st.one_of(st.none(), valid_tensors()),
}


@st.composite
def valid_messages(draw):
    """Any message of §4 with fields of the right types and within the limits."""
    cls = draw(st.sampled_from(sorted(MESSAGE_TYPES.values(), key=lambda c: c.TYPE)))
    kwargs = {name: draw(_FIELD_VALUES[expected]) for name, expected in _spec(cls) if expected is not None}
    return cls(**kwargs)


@st.composite
def wrong_shape_frames(draw) -> bytes:
    """A msgpack map that looks like a message (right version and type, often) with fields of any type."""
    cls = draw(st.sampled_from(sorted(MESSAGE_TYPES.values(), key=lambda c: c.TYPE)))
    body: dict = {}
    if draw(st.integers(0, 9)):
        body["v"] = 1
    else:
        body["v"] = draw(values)
    body["type"] = cls.TYPE if draw(st.integers(0, 9)) else draw(values)
    for name, expected in _spec(cls):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            continue
        if expected is WireTensor:
            body[name] = draw(tensor_maps) if choice < 3 else draw(values)
        elif choice == 1 and expected in _FIELD_VALUES:
            body[name] = draw(_FIELD_VALUES[expected])
        else:
            body[name] = draw(values)
    body.update(draw(st.dictionaries(st.text(max_size=8), values, max_size=3)))  # unknown fields (§2.4)
    return msgpack.packb(body, use_bin_type=True)


@st.composite
def mutated(draw, frame: bytes) -> bytes:
    """``frame`` with a few bits flipped, bytes replaced, inserted or cut off (at least one change)."""
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "truncate", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xCF, 0xD3, 0xDD, 0xDF, 0xFF]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate":
            del data[at:]
        elif data:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)
