"""An outsider cannot make a node allocate far more memory than it sends (spec §6.1-§6.3).

A real node process with the default 64 MiB frame limit gets frames built to expand when unpacked:
16 MiB of empty msgpack maps (each 1 byte on the wire, ~64 bytes as a Python dict), a tree of
nested arrays that stays within every per-container limit, and an oversized sealed frame after a
secure handshake. Each attack must cost the node less than 256 MiB of peak RSS, get a protocol
error or a closed connection, and leave the node serving normal requests on new connections.

Peak RSS growth of the node, measured with this file against the code before the limits existed:
empty maps +1189 MiB, array tree +1177 MiB, 100 MiB sealed frame +300 MiB (and the 256 kB frame got a
reply instead of a close); with the limits: +33 MiB, +33 MiB, +0 MiB.
"""

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.sync.client import connect

from swarmnode.launcher import start_node
from swarmnode.protocol import (
    Error,
    Info,
    InfoReply,
    OpenSession,
    SessionOpened,
    Step,
    StepResult,
    decode,
    encode,
    tensor_from_numpy,
)
from swarmnode.trust.secure_channel import client_handshake, finish_handshake

BUDGET = 256 << 20  # what one attack may add to the node's peak RSS
MIB = 1 << 20


@pytest.fixture(scope="module")
def node(tiny_models, tmp_path_factory):
    """A tiny node with the default limits (the shared ``tiny_node`` has a 200 kB frame limit)."""
    logs = tmp_path_factory.mktemp("frame-memory")
    proc = start_node(str(tiny_models["llama"]), "0:6", extra_args=["--backend", "torch"], log_path=logs / "node.log")
    yield proc
    proc.process.kill()
    proc.process.wait()


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class PeakRss:
    """Growth of a process's peak RSS over a block: the kernel's high-water mark is reset to the current
    RSS first (``clear_refs`` 5), so the peak left by loading the model cannot hide the attack."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> "PeakRss":
        with open(f"/proc/{self.pid}/clear_refs", "w") as refs:
            refs.write("5")
        self.before = _status_kib(self.pid, "VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        self.growth = _status_kib(self.pid, "VmHWM") * 1024 - self.before


def _empty_maps(n: int = 16 * MIB) -> bytes:
    """``[{}, {}, ...]``: one byte per map on the wire."""
    return b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n


def _array_tree(fanout: int = 64, depth: int = 4) -> bytes:
    """A step whose ``route`` is a tree of arrays, ``fanout`` items each, ``depth`` levels, empty arrays
    at the leaves: no array is longer than a legitimate route, but 64**4 leaves make ~16 MiB."""
    header = b"\xdc" + fanout.to_bytes(2, "big")
    tree = header + b"\x90" * fanout
    for _ in range(depth - 1):
        tree = header + tree * fanout
    head = {"v": 1, "type": "step", "id": 7, "session_id": "x"}
    return b"\x85" + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in head.items()) + b"\xa5route" + tree


def _answer(ws, frame: bytes):
    """The node's reply to ``frame``, or how it closed the connection."""
    try:
        ws.send(frame)
        return decode(ws.recv(timeout=60))
    except ConnectionClosed as exc:
        return exc


def _too_big(reply) -> bool:
    closed = isinstance(reply, ConnectionClosed) and reply.rcvd is not None
    return closed and reply.rcvd.code == CloseCode.MESSAGE_TOO_BIG


def _serves(url: str) -> None:
    """A new connection gets normal answers: info, and a step through the span."""
    with connect(url, compression=None) as ws:
        ws.send(encode(Info(id=1)))
        assert isinstance(decode(ws.recv(timeout=30)), InfoReply)
        ws.send(encode(OpenSession(id=2, session_id="after", max_length=8)))
        assert isinstance(decode(ws.recv(timeout=30)), SessionOpened)
        hidden = tensor_from_numpy(np.ones((1, 2, 64), np.float32))
        ws.send(encode(Step(id=3, session_id="after", position=0, hidden=hidden)))
        reply = decode(ws.recv(timeout=30))
        assert isinstance(reply, StepResult) and reply.hidden.shape == (1, 2, 64) and reply.position == 2


@pytest.mark.parametrize("frame", [_empty_maps(), _array_tree()], ids=["empty-maps", "array-tree"])
def test_it_refuses_frames_that_expand_when_unpacked(node, frame):
    """§6.2: 16 MiB that would unpack to ~1 GB of Python objects."""
    assert 16 * MIB <= len(frame) < 18 * MIB
    with PeakRss(node.process.pid) as peak, connect(node.url, compression=None, max_size=None) as ws:
        reply = _answer(ws, frame)
    print(f"peak RSS growth: {peak.growth / MIB:.0f} MiB")
    assert peak.growth < BUDGET
    assert (isinstance(reply, Error) and reply.code == "bad_frame") or _too_big(reply), reply
    _serves(node.url)


def test_it_refuses_an_oversized_sealed_frame_without_opening_it(node):
    """§6.3: a sealed frame larger than the limit plus the seal's overhead ends the connection unread."""
    with connect(node.url, compression=None, max_size=None) as ws:
        ws.send(encode(Info(id=1)))
        public_key = decode(ws.recv(timeout=30)).public_key
        hello, pending = client_handshake(public_key)
        ws.send(hello)
        finish_handshake(pending, ws.recv(timeout=30))
        sealed = msgpack.packb({"v": 1, "type": "sealed", "seq": 0, "box": bytes(100 * MIB)}, use_bin_type=True)
        with PeakRss(node.process.pid) as peak:
            reply = _answer(ws, sealed)
    print(f"peak RSS growth: {peak.growth / MIB:.0f} MiB")
    assert peak.growth < BUDGET
    assert _too_big(reply), reply
    _serves(node.url)


def test_it_closes_a_connection_whose_frame_is_over_the_bound_and_serves_others(tiny_node):
    """§6.3: a message over the frame limit plus 1 KiB is refused by the websocket layer (close code 1009)
    before it is read; frames between the two get a ``frame_too_large`` reply (test_bad_input.py)."""
    frame = encode(Step(id=1, session_id="x", hidden=tensor_from_numpy(np.zeros((1, 1000, 64), np.float32))))
    assert len(frame) > 200_000 + 1024  # the tiny node runs with --max-frame-bytes 200000
    with connect(tiny_node.url, compression=None, max_size=None) as ws:
        assert _too_big(_answer(ws, frame))
    with connect(tiny_node.url, compression=None) as ws:
        ws.send(encode(Info(id=1)))
        assert isinstance(decode(ws.recv(timeout=30)), InfoReply)
