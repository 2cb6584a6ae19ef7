"""``deploy/`` starts the processes the demo and the tests start (``portal/processes.py``), so they cannot drift.

A production portal has Redis, so its chat gateway runs as its own process (``manage.py run_gateway``): the
compose file and the systemd units must declare it, supervised, next to daphne and Celery. Also: nginx is
the only proxy the portal believes about visitors' addresses.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path

import pytest
import yaml

from portal.middleware import client_address
from portal.processes import ASGI_APP, WSGI_APP, PortalProcesses

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# PortalProcesses reads these from the environment too: a shell with REDIS_URL set (make test's second pass,
# a developer's) must not change what the tests below ask of it.
PROCESS_SETTINGS = ("REDIS_URL", "CHAT_GATEWAY_EMBEDDED", "PORTAL_HTTP_WORKERS", "PROMETHEUS_MULTIPROC_DIR")
PORTAL_SERVICES = {"migrate", "postgres", "redis", "nginx"}  # not long-running portal processes


@pytest.fixture(autouse=True)
def _no_process_settings_from_the_shell(monkeypatch):
    for name in PROCESS_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def kinds(argv: list[str]) -> set[str]:
    """What a command line runs, independent of paths, ports and log options."""
    words = [Path(w).name for w in argv]
    found = set()
    if "daphne" in words and ASGI_APP in argv:
        found.add("daphne")
    if "gunicorn" in words and WSGI_APP in argv:
        found.add("http")
    if "manage.py" in words and "run_gateway" in words:
        found.add("gateway")
    if "celery" in words and "portal" in words:
        if "worker" in words:
            found.add("celery-worker")
        if "beat" in words or "--beat" in words or "-B" in words:
            found.add("celery-beat")
    return found


def demo_kinds(env: dict[str, str]) -> set[str]:
    """The kinds of process ``PortalProcesses`` starts with ``env`` (daphne always comes first)."""
    portal = PortalProcesses(env=env)
    found = {"daphne"}
    for cmd in portal.workers_commands().values():
        found |= kinds(cmd)
    return found


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


def unit_exec(path: Path) -> list[str]:
    text = path.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def unit_setting(path: Path, key: str) -> str | None:
    match = re.search(rf"^{key}=(.*)$", path.read_text(), re.M)
    return match.group(1).strip() if match else None


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_it_starts_a_separate_gateway_exactly_when_redis_is_the_channel_layer():
    assert demo_kinds({}) == {"daphne", "celery-worker", "celery-beat"}  # the demo: gateway inside daphne
    production = demo_kinds({"REDIS_URL": "redis://127.0.0.1:6379/0", "CHAT_GATEWAY_EMBEDDED": "0"})
    assert production == {"daphne", "gateway", "celery-worker", "celery-beat"}
    # Production serves /api/ from gunicorn's WSGI workers too (#24): PORTAL_HTTP_WORKERS asks for them.
    assert demo_kinds({"PORTAL_HTTP_WORKERS": "4"}) == {"daphne", "http", "celery-worker", "celery-beat"}


def test_it_declares_every_systemd_unit_the_production_env_needs_and_supervises_them():
    env = env_file(DEPLOY / "portal.env.example")
    wanted = demo_kinds(env)
    assert "gateway" in wanted, "portal.env.example uses Redis, so the gateway runs on its own"
    assert "http" in wanted, "portal.env.example serves /api/ from gunicorn's workers (PORTAL_HTTP_WORKERS)"
    declared: set[str] = set()
    for unit in DEPLOY.glob("portal-*.service"):
        found = kinds(unit_exec(unit))
        assert found, f"{unit.name} runs nothing the portal starts"
        assert unit_setting(unit, "Restart") == "on-failure", unit.name
        assert unit_setting(unit, "EnvironmentFile") == "/etc/layerswarm/portal.env", unit.name
        declared |= found
    assert declared == wanted


def test_it_declares_every_compose_service_the_production_env_needs_and_restarts_them():
    services = compose()["services"]
    env = {k: str(v) for k, v in services["portal"]["environment"].items()}
    wanted = demo_kinds(env)
    declared: set[str] = set()
    for name, service in services.items():
        if name in PORTAL_SERVICES:
            continue
        found = kinds(service["command"])
        assert found, f"compose service {name!r} runs nothing the portal starts"
        assert service.get("restart") in ("on-failure", "unless-stopped", "always"), name
        declared |= found
    assert declared == wanted
    gateway = next(s for s in services.values() if "gateway" in kinds(s.get("command", [])))
    assert gateway["environment"]["REDIS_URL"] == env["REDIS_URL"], "the gateway shares daphne's channel layer"


def test_it_lets_only_nginx_name_the_visitors_address_in_compose():
    spec = compose()
    services = spec["services"]
    trusted = services["portal"]["environment"]["TRUSTED_PROXIES"]
    nginx_ip = services["nginx"]["networks"]["internal"]["ipv4_address"]
    assert [ipaddress.ip_network(c) for c in trusted.split(",")] == [ipaddress.ip_network(f"{nginx_ip}/32")]
    published = [name for name, s in services.items() if s.get("ports")]
    assert published == ["nginx"], "only nginx may be reachable from outside (else X-Forwarded-For is forgeable)"
    assert client_address(nginx_ip, "203.0.113.7", trusted_proxies=[trusted]) == "203.0.113.7"
    # A visitor on the internal network (or anyone else) cannot pose as another by sending the header.
    assert client_address("172.28.0.9", "203.0.113.7", trusted_proxies=[trusted]) == "172.28.0.9"


def test_it_lets_only_nginx_name_the_visitors_address_on_a_systemd_host():
    trusted = env_file(DEPLOY / "portal.env.example")["TRUSTED_PROXIES"].split(",")
    assert all(ipaddress.ip_network(c).is_loopback for c in trusted), "nginx on this host: loopback only"
    daphne = unit_exec(DEPLOY / "portal-daphne@.service")
    assert daphne[daphne.index("-b") + 1] == "127.0.0.1", "daphne must not be reachable around nginx"
    nginx = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream layerswarm_portal \{(.*?)\}", nginx, re.S).group(1)
    assert re.findall(r"server (\S+?):(\d+);", upstream) == [("127.0.0.1", "8001"), ("127.0.0.1", "8002")]
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in nginx
    assert client_address("127.0.0.1", "198.51.100.4, 203.0.113.7", trusted_proxies=trusted) == "203.0.113.7"
    assert client_address("203.0.113.99", "198.51.100.4", trusted_proxies=trusted) == "203.0.113.99"


def test_nginx_sends_the_tracker_api_to_the_http_workers_on_loopback():
    http = unit_exec(DEPLOY / "portal-http.service")
    assert http[http.index("--bind") + 1] == "127.0.0.1:8100", "gunicorn must not be reachable around nginx"
    for conf, server in (("nginx.conf", ("127.0.0.1", "8100")), ("nginx-compose.conf", ("http", "8100"))):
        nginx = (DEPLOY / conf).read_text()
        upstream = re.search(r"upstream layerswarm_http \{(.*?)\}", nginx, re.S).group(1)
        assert re.findall(r"server (\S+?):(\d+);", upstream) == [server], conf
        api = re.search(r"location /api/ \{(.*?)\}", nginx, re.S).group(1)
        assert "proxy_pass http://layerswarm_http;" in api, conf
        assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in api, conf


def test_the_node_image_serves_from_the_config_file_with_the_token_from_the_environment():
    dockerfile = (DEPLOY / "node.Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cpu$", dockerfile, re.M)
    assert 'CMD ["serve", "--config", "/etc/layerswarm/node.toml"]' in dockerfile
    assert "COPY deploy/node.example.toml /etc/layerswarm/node.toml" in dockerfile
    import tomllib

    config = tomllib.loads((DEPLOY / "node.example.toml").read_text())
    assert "token" not in config, "the token comes from SWARMNODE_TOKEN, never from a file baked into an image"
    assert config["model"] and config["portal"].startswith("https://")
