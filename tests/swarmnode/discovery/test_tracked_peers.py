"""What a tracker lists is a stranger's word (#17): a node registered at a private address is never dialled from a
public tracker's list (blind SSRF), and a node is known by the key the tracker registered, not by what answers."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from websockets.sync.server import serve

from swarmnode.discovery import swarm_view
from swarmnode.discovery.addresses import PrivateAddress, public_address, tracker_is_local
from swarmnode.discovery.probe import ask_info
from swarmnode.protocol import InfoReply, decode, encode

REGISTERED_KEY = "ed25519:registered,x25519:registered"
MODEL = "m"


@pytest.fixture
def fake_node():
    """A websocket server on loopback that answers ``info`` as a node of ``MODEL`` with ``key``; counts connections."""
    state = {"key": REGISTERED_KEY, "connections": 0}

    def handler(ws):
        state["connections"] += 1
        for frame in ws:
            ws.send(encode(InfoReply(id=decode(frame).id, model=MODEL, end_block=4, public_key=state["key"])))

    with serve(handler, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        state["port"] = server.socket.getsockname()[1]
        state["url"] = f"ws://127.0.0.1:{state['port']}/layerswarm/v1"
        yield state
        server.shutdown()


def _tracker(host, spans):
    """A tracker answering every GET with ``spans``, listening on ``host``; returns the server (shut it down)."""

    class Spans(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"spans": spans}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, 0), Spans)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _span(url, key=REGISTERED_KEY, node_id=7):
    return {
        "url": url,
        "model": MODEL,
        "start_block": 0,
        "end_block": 4,
        "num_blocks": 4,
        "hidden_size": 8,
        "dtype": "float32",
        "cache_tokens_left": 100,
        "max_session_length": 100,
        "id": node_id,
        "reputation": 0.9,
        "public_key": key,
    }


def _own_name():
    """This machine's name and an address it resolves to; a name counts as a public host (nothing resolved)."""
    name = socket.gethostname()
    try:
        return name, socket.gethostbyname(name)
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")


def test_a_public_trackers_private_urls_are_never_dialled(fake_node):
    name, address = _own_name()
    if tracker_is_local(f"http://{name}:1"):
        pytest.skip(f"this machine's name {name!r} is not a name")
    listed = [
        fake_node["url"],  # a loopback literal
        f"ws://{name}:{fake_node['port']}/layerswarm/v1",  # a name that resolves to a private address
        "ws://169.254.169.254/latest/meta-data/",  # the cloud metadata service
        "ws://[::1]:9/",
    ]
    tracker = _tracker(address, [_span(u, node_id=i + 1) for i, u in enumerate(listed)])
    try:
        portal = f"http://{name}:{tracker.server_address[1]}"
        assert swarm_view(MODEL, portal, []) == []
        assert fake_node["connections"] == 0
        # The operator's own --peers are dialled as typed, private or not.
        view = swarm_view(MODEL, portal, [fake_node["url"]])
        assert [p.url for p in view] == [fake_node["url"]] and fake_node["connections"] == 1
    finally:
        tracker.shutdown()


def test_a_local_tracker_lists_a_local_swarm_unless_private_addresses_are_refused(fake_node):
    tracker = _tracker("127.0.0.1", [_span(fake_node["url"])])
    try:
        portal = f"http://127.0.0.1:{tracker.server_address[1]}"
        assert swarm_view(MODEL, portal, [], private_ok=False) == []
        assert fake_node["connections"] == 0
        (peer,) = swarm_view(MODEL, portal, [])  # a tracker on loopback: tests, a LAN swarm
        assert fake_node["connections"] == 1
        assert (peer.url, peer.public_key, peer.node_id, peer.reputation) == (fake_node["url"], REGISTERED_KEY, 7, 0.9)
    finally:
        tracker.shutdown()


def test_a_node_answering_with_another_key_than_the_tracker_registered_is_dropped(fake_node):
    """The tracker's key was proved at registration (a signed challenge); whoever answers at the URL proved none."""
    fake_node["key"] = "ed25519:someone-else,x25519:someone-else"
    tracker = _tracker("127.0.0.1", [_span(fake_node["url"])])
    try:
        portal = f"http://127.0.0.1:{tracker.server_address[1]}"
        assert swarm_view(MODEL, portal, []) == []
        assert fake_node["connections"] == 1  # it was asked, and left out for its answer
    finally:
        tracker.shutdown()
    # A tracker that registered no key: the node's own word is all there is.
    tracker = _tracker("127.0.0.1", [_span(fake_node["url"], key="")])
    try:
        (peer,) = swarm_view(MODEL, f"http://127.0.0.1:{tracker.server_address[1]}", [])
        assert peer.public_key == fake_node["key"]
    finally:
        tracker.shutdown()


def test_a_public_only_probe_checks_every_address_before_dialling(fake_node):
    with pytest.raises(PrivateAddress, match="private"):
        ask_info(fake_node["url"], 3.0, public_only=True)
    with pytest.raises(PrivateAddress, match="private"):
        public_address("ws://localhost:80/")
    with pytest.raises(PrivateAddress, match="not a ws"):
        public_address("file:///etc/passwd")
    assert fake_node["connections"] == 0
    assert ask_info(fake_node["url"], 3.0).public_key == REGISTERED_KEY  # not public_only: as typed


def test_a_client_reading_a_public_tracker_dials_no_private_url_and_pins_registered_keys(fake_node):
    """The client (and a gateway built on it) reads the tracker through ``probe_swarm``: the same two rules."""
    from swarmnode.client.latency import RttTable
    from swarmnode.client.probing import probe_swarm

    name, address = _own_name()
    if tracker_is_local(f"http://{name}:1"):
        pytest.skip(f"this machine's name {name!r} is not a name")
    named = f"ws://{name}:{fake_node['port']}/layerswarm/v1"  # resolves to this machine: private
    tracker = _tracker(address, [_span(fake_node["url"]), _span(named, node_id=8)])
    try:
        portal = f"http://{name}:{tracker.server_address[1]}"
        infos, errors = probe_swarm([], portal, MODEL, RttTable(), 3.0, tracker_optional=False)
        assert infos == [] and set(errors) == {fake_node["url"], named} and fake_node["connections"] == 0
    finally:
        tracker.shutdown()
    fake_node["key"] = "ed25519:someone-else,x25519:someone-else"
    tracker = _tracker("127.0.0.1", [_span(fake_node["url"])])  # a local tracker: dialled, but the key is wrong
    try:
        portal = f"http://127.0.0.1:{tracker.server_address[1]}"
        infos, errors = probe_swarm([], portal, MODEL, RttTable(), 3.0, tracker_optional=False)
        assert infos == [] and "other keys" in errors[fake_node["url"]] and fake_node["connections"] >= 1
    finally:
        tracker.shutdown()
