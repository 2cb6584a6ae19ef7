"""Asking peers what they serve: the swarm view a joining node builds, and peers that answer badly."""

import threading

import pytest
from websockets.sync.server import serve

from swarmnode.discovery import PeerInfo, probe_peers, swarm_view
from swarmnode.discovery.probe import MAX_INFO_BYTES
from swarmnode.protocol import SessionClosed, encode


def test_it_learns_the_swarm_from_peers_and_skips_the_dead(tiny_node):
    dead = "ws://127.0.0.1:9/layerswarm/v1"
    view = swarm_view("llama", None, [tiny_node.url, dead])
    assert [(p.url, p.start_block, p.end_block) for p in view] == [(tiny_node.url, 0, 6)]
    assert swarm_view("other-model", None, [tiny_node.url]) == []


@pytest.fixture
def bad_peer():
    """A websocket server that answers every frame with what the test sets in ``reply``."""
    state = {"reply": b""}

    def handler(ws):
        for _ in ws:
            ws.send(state["reply"])

    with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        state["url"] = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/layerswarm/v1"
        yield state
        server.shutdown()


@pytest.mark.parametrize(
    "reply",
    [
        b"\x00" * (MAX_INFO_BYTES + 1),  # a frame far larger than any info reply: refused before decoding
        b"\xc1garbage",  # not msgpack
        encode(SessionClosed(id=1, session_id="s")),  # a well-formed message of the wrong type
    ],
    ids=["oversized", "garbage", "wrong-type"],
)
def test_it_lists_a_peer_that_answers_badly_as_an_error(bad_peer, reply):
    bad_peer["reply"] = reply
    infos, errors = probe_peers([bad_peer["url"], "http://127.0.0.1:9/not-a-websocket"], timeout=3.0)
    assert infos == [] and set(errors) == {bad_peer["url"], "http://127.0.0.1:9/not-a-websocket"}


def test_one_record_serves_tracker_entries_and_announcements():
    entry = {
        "url": "ws://h:1/",
        "model": "m",
        "start_block": 0,
        "end_block": 10,
        "num_blocks": 30,
        "hidden_size": 576,
        "dtype": "float32",
        "cache_tokens_left": 5,
        "max_session_length": 99,
        "id": 7,
        "reputation": 0.5,
    }
    peer = PeerInfo.from_tracker(entry)
    assert (peer.node_id, peer.reputation, peer.length) == (7, 0.5, 10)
    announced = peer.announcement()
    assert announced["start_block"] == 0 and "node_id" not in announced and "reputation" not in announced
