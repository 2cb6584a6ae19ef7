"""``swarmnode doctor`` against a live portal (daphne): every check answers, the token is checked for real,
and the portal's relay dials the node's address back.

The node behind a real NAT, which doctor reports as needing a relay, is in ``tests/network/test_network_nat.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from portal.processes import create_user_with_node_token, live_portal
from swarmnode.doctor import portal_checks
from swarmnode.server import NodeConfig

pytestmark = pytest.mark.slow


def doctor(config, env: dict[str, str], *args: str) -> tuple[int, dict[str, dict]]:
    """Run ``swarmnode doctor --json --config CONFIG``; returns the exit code and the checks by name."""
    out = subprocess.run(
        [sys.executable, "-m", "swarmnode", "doctor", "--json", "--config", str(config), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["config"] == str(config)
    return out.returncode, {c["name"]: c for c in report["checks"]}


def test_doctor_checks_a_node_against_a_live_portal(tmp_path, tiny_models):
    config = tmp_path / "node.toml"
    with live_portal(tmp_path, f"layerswarm_doctor_{os.getpid()}", celery=False) as portal:
        token = create_user_with_node_token(portal.env, "doctor", "doctor-password-1")
        config.write_text(f'model = "{tiny_models["llama"]}"\nblocks = "0:6"\nportal = "{portal.url}"\n')

        code, checks = doctor(config, {"SWARMNODE_TOKEN": token})  # the token only in the environment
        assert code == 0, checks
        assert [c for c in checks.values() if c["status"] == "FAIL"] == []
        assert list(checks) == ["system", "model", "memory", "disk", "backend", "portal", "token", "reachability"]
        assert checks["portal"]["status"] == "OK" and portal.url in checks["portal"]["detail"]
        assert checks["token"]["status"] == "OK"
        assert checks["memory"]["status"] == "OK" and "blocks 0:6" in checks["memory"]["detail"]
        assert "ms per block per decoding step" in checks["backend"]["detail"]
        # The portal's relay dialled the probe on 127.0.0.1 back: on loopback the node is reachable.
        assert checks["reachability"]["status"] == "OK", checks["reachability"]
        assert "directly" in checks["reachability"]["detail"]

        forged = portal_checks(NodeConfig(portal=portal.url, token="lsn_forged_0000"))
        assert [c.status for c in forged] == ["OK", "FAIL"]
        assert "refuses" in forged[1].detail and "Contribute page" in forged[1].fix

    [gone] = portal_checks(NodeConfig(portal=portal.url, token=token), timeout=2.0)  # the portal has stopped
    assert gone.status == "FAIL" and "does not answer" in gone.detail and gone.fix


def test_doctor_says_what_is_missing_without_a_portal():
    [check] = portal_checks(NodeConfig())
    assert check.status == "WARN" and "SWARMNODE_PORTAL" in check.fix
    [check] = portal_checks(NodeConfig(portal="http://127.0.0.1:9"), timeout=2.0)  # nothing listens on port 9
    assert check.status == "FAIL"
