"""``manage.py run_demo --models A,B`` (``make demo MODELS=A,B``, #20 item 5): the real command catalogues every
model and starts nodes of each; every model is covered on the portal, each node of each model keeps its own
identity key (a key is one node), and Ctrl-C stops the portal and every node, which say goodbye first.
Two tiny random-weight checkpoints stand in for the real models so the test starts in seconds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from portal.processes import BASE_DIR, local_env, manage, scratch_database
from swarmnode.models import resolve_model
from swarmnode.testing.polling import wait_until
from tests.swarmnode.conftest import make_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.model]


def _health(url: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"{url}/api/v1/swarm/health/", timeout=10) as r:
        return {m["model"]: m for m in json.loads(r.read())["models"]}


def _dht_urls(addrs: list[str]) -> set[str]:
    from swarmnode.dht import open_dht

    dht = open_dht(addrs, client_mode=True)
    try:
        return {p.url for m in ("tiny-llama", "tiny-qwen2") for p in dht.lookup(m, range(6))}
    finally:
        dht.close()


def test_run_demo_serves_several_models(tmp_path):
    chat = make_tiny_model("llama", tmp_path / "tiny-llama", resolve_model("smollm2"))  # keeps the chat template
    base = make_tiny_model("qwen2", tmp_path / "tiny-qwen2", resolve_model("smollm2"))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    with scratch_database(
        os.environ.get("DATABASE_URL", "sqlite://"), f"layerswarm_demo_{os.getpid()}", tmp_path
    ) as db:
        env = {"DATABASE_URL": db, "LAYERSWARM_VAR_DIR": str(tmp_path / "var"), "SWARM_HEARTBEAT_INTERVAL": "1"}
        command = [sys.executable, str(BASE_DIR / "manage.py"), "run_demo", "--port", "0", "--nodes", "2",
                   "--no-celery", "--models", f"{chat},{base}"]  # fmt: skip
        log = open(tmp_path / "demo.out", "w+")  # noqa: SIM115 - read back below
        demo = subprocess.Popen(command, env=local_env(env), cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            banner = wait_until(
                lambda: "Layerswarm is up" in (text := Path(log.name).read_text()) and text, 240, "the demo's banner"
            )
            url = re.search(r"Layerswarm is up: (http://\S+?)/\s", banner).group(1)
            health = _health(url)
            assert {name: (h["kind"], h["covered"], h["online_nodes"]) for name, h in health.items()} == {
                "smollm2": ("chat", False, 0),  # seeded by the migrations, no nodes in this demo
                "tiny-llama": ("chat", True, 2),
                "tiny-qwen2": ("completion", True, 2),
            }
            assert f"{url}/swarm/tiny-qwen2/" in banner and "--model tiny-llama --chat" in banner
            identities = tmp_path / "var" / "demo" / "identities"
            keys = sorted(str(p.relative_to(identities)) for p in identities.rglob("*.key"))
            assert keys == ["node-0.key", "node-1.key", "tiny-qwen2/node-0.key", "tiny-qwen2/node-1.key"]
            announced = {n["url"] for h in health.values() for n in h["nodes"]}
            assert len(announced) == 4
            if "--dht " in banner:  # hivemind installed: the portal's bootstrap peer runs, every node announced (#18)
                with urllib.request.urlopen(f"{url}/api/v1/swarm/bootstrap/", timeout=10) as r:
                    addrs = json.loads(r.read())["bootstrap"]
                wait_until(lambda: _dht_urls(addrs) == announced, 60, "every demo node in the DHT")
        finally:
            os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in its terminal: the whole process group
            demo.wait(timeout=60)
            log.close()
        rows = "print(sorted(set(Node.objects.values_list('model__name', 'token__name', 'state'))))"
        left = manage(["shell", "-c", "from portal.swarm.models import Node; " + rows], env)
        # Every node said goodbye; each model's nodes ran on a token of their own (a token's node limit is 8).
        assert left.stdout.strip().splitlines()[-1] == str(
            [("tiny-llama", "demo swarm", "offline"), ("tiny-qwen2", "demo swarm: tiny-qwen2", "offline")]
        )
