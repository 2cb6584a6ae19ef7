"""``forward.lengths`` (spec §4.4): an encoder's padded rows, bounded and type-checked before any compute."""

import msgpack
import numpy as np
import pytest

from swarmnode.protocol import Forward, ProtocolError, decode, encode, tensor_from_numpy
from swarmnode.protocol.validation import check_lengths

HIDDEN = tensor_from_numpy(np.zeros((3, 5, 4), dtype=np.float32))


def _frame(lengths) -> bytes:
    body = msgpack.unpackb(encode(Forward(id=1, hidden=HIDDEN)), raw=False)
    body["lengths"] = lengths
    return msgpack.packb(body, use_bin_type=True)


def test_lengths_round_trip():
    msg = decode(encode(Forward(id=1, hidden=HIDDEN, lengths=(5, 2, 1))))
    assert msg.lengths == (5, 2, 1)
    assert decode(encode(Forward(id=1, hidden=HIDDEN))).lengths == ()


@pytest.mark.parametrize("bad", ["5,2,1", [5, "2", 1], [True, 2, 1], [-1, 2, 1], [2**40], list(range(65)), {"a": 1}])
def test_malformed_lengths_are_refused_when_decoding(bad):
    with pytest.raises(ProtocolError) as err:
        decode(_frame(bad))
    assert err.value.code == "bad_field"


@pytest.mark.parametrize("bad", [(5, 2), (5, 2, 1, 1), (5, 0, 1), (6, 2, 1)])
def test_lengths_must_give_each_row_one_to_t_positions(bad):
    with pytest.raises(ProtocolError, match="one per row") as err:
        check_lengths(bad, HIDDEN)
    assert err.value.code == "bad_field"


def test_no_lengths_or_one_per_row_pass():
    check_lengths((), HIDDEN)
    check_lengths((5, 5, 1), HIDDEN)
