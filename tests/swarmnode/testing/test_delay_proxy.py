"""The delaying TCP proxy: it adds the configured delay each way, keeps data intact, refuses non-loopback targets."""

import socket
import threading
import time

import pytest

from swarmnode.testing.delay_proxy import DelayProxy, LinkShape


@pytest.fixture
def echo_port():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(2)
    server.close()


def _round_trip(port: int, payload: bytes) -> tuple[float, bytes]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += sock.recv(65536)
        return time.perf_counter() - started, got


def test_it_adds_the_delay_in_each_direction_and_keeps_bytes_intact(echo_port):
    with DelayProxy(echo_port, LinkShape(one_way_delay_s=0.05)) as proxy:
        rtt, got = _round_trip(proxy.port, b"hello swarm")
    assert got == b"hello swarm"
    assert rtt >= 0.1  # 50 ms each way (a lower bound: only the emulated delay is guaranteed)


def test_it_caps_bandwidth(echo_port):
    payload = bytes(range(256)) * 800  # 200 kB
    with DelayProxy(echo_port, LinkShape(bandwidth_bytes_per_s=1_000_000)) as proxy:
        elapsed, got = _round_trip(proxy.port, payload)
    assert got == payload
    assert elapsed >= 0.2  # 200 kB at 1 MB/s, and again on the way back


def test_it_only_proxies_to_loopback():
    with pytest.raises(ValueError, match="loopback"):
        DelayProxy(80, LinkShape(), target_host="10.0.0.1")


def test_it_rewrites_node_urls_to_its_own_port(echo_port):
    with DelayProxy(echo_port, LinkShape()) as proxy:
        assert proxy.url_for("ws://127.0.0.1:1234/layerswarm/v1") == f"ws://127.0.0.1:{proxy.port}/layerswarm/v1"


def test_it_closes_cleanly_while_connections_are_open(echo_port):
    proxy = DelayProxy(echo_port, LinkShape(one_way_delay_s=0.01)).start()
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(b"x")
    proxy.stop()
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
