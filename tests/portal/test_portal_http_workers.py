"""The portal's plain HTTP from gunicorn's WSGI workers beside daphne (production's /api/, #24): nodes register
and heartbeat there, and nothing a stranger sends (huge, deep or non-HTTP bytes) takes a worker down."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request

import pytest

from portal.processes import create_user_with_node_token, live_portal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("http-workers")
    env = {"PORTAL_HTTP_WORKERS": "2", "ALLOW_PRIVATE_PEERS": "1"}
    with live_portal(folder, f"layerswarm_http_{os.getpid()}", celery=False, env=env) as portal:
        yield portal


def _post(url: str, token: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _raw(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; what the server answers before it closes (or 5 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may close before it has read everything: its answer is what counts
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
        except OSError:
            pass
    return answer


def _workers(master_pid: int) -> set[int]:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == master_pid:
                children.add(int(entry))
    return children


def test_nodes_heartbeat_through_the_http_workers_and_strangers_cannot_take_them_down(portal):
    assert portal.http_port and portal.http_port != portal.port
    api = portal.http_url + "/api/v1/nodes"
    token = create_user_with_node_token(portal.env, "volunteer", "volunteer-password-1")
    body = {"model": "smollm2", "start_block": 0, "end_block": 10, "url": "ws://127.0.0.1:45001/layerswarm/v1"}
    body |= {"backend": "torch", "device": "cpu", "dtype": "float32", "throughput": 10.0, "version": "0.1.0"}
    status, node = _post(api + "/register/", token, body)
    assert status == 201
    status, beat = _post(f"{api}/{node['id']}/heartbeat/", token, {"cache_tokens_left": 5})
    assert (status, beat["state"]) == (200, "online")

    master = next(p.pid for p in portal.procs if "gunicorn" in p.args)
    workers = _workers(master)
    assert len(workers) == 2
    path = f"/api/v1/nodes/{node['id']}/heartbeat/"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
    huge = head + "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
    # Refused from the declared length alone (Django's upload limit: 400; under it the API's JSON limit: 413).
    assert _raw(portal.http_port, huge.encode() + b"{" + b" " * 1_000_000).split(b" ")[1] in (b"400", b"413")
    deep = b'{"cache_tokens_left": ' + b"[" * 8000 + b"]" * 8000 + b"}"
    framed = head + f"Content-Type: application/json\r\nContent-Length: {len(deep)}\r\n\r\n"
    assert b" 400 " in _raw(portal.http_port, framed.encode() + deep)
    assert b" 400 " in _raw(portal.http_port, b"\x00\xff\xfe not http at all\r\n\r\n")
    assert b" 414 " in _raw(portal.http_port, b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n")

    # The same workers still serve the node, and daphne (websockets, pages) is untouched.
    status, beat = _post(f"{api}/{node['id']}/heartbeat/", token, {"cache_tokens_left": 6})
    assert (status, beat["state"]) == (200, "online")
    assert _workers(master) == workers, "a worker died and was replaced"
    with urllib.request.urlopen(portal.url + "/api/v1/models/", timeout=10) as response:
        assert response.status == 200
