"""The swarm outlives its portal (#18): portal + DHT, the portal SIGKILLed, generation goes on through the DHT.

Real processes: the portal's own DHT bootstrap peer (``manage.py run_dht_bootstrap``), a portal (daphne, scratch
database) that publishes it at ``/api/v1/swarm/bootstrap/``, three SmolLM2 nodes announcing to both. With the
portal killed, a client finds the spans through the DHT and keeps generating for two minutes, every greedy
generation equal to local ``transformers``'; meanwhile a fourth node joins through the DHT only, and one original
node is killed mid-generation: the client fails over through a DHT lookup (which finds the newcomer) with
identical tokens. Restarted, the portal's health map shows every live node within 30 s (the newcomer from the DHT).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from portal.processes import BASE_DIR, PortalProcesses, create_user_with_node_token, live_portal, local_env
from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm, start_node
from swarmnode.models import resolve_model
from swarmnode.testing.polling import wait_until
from tests.swarmnode.dht.conftest import kill_with_daemons, start_dht_peer

pytestmark = [pytest.mark.slow, pytest.mark.model]

PROMPT = torch.tensor([[1, 504, 3290, 314, 2683, 30, 1012, 17]])
OPTS = dict(max_new_tokens=16, do_sample=False)
OUTAGE_S = 120.0  # how long the client keeps generating with the portal down


def health_urls(portal_url: str) -> set[str]:
    try:
        body = httpx.get(f"{portal_url}/api/v1/swarm/health/?model=smollm2", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return set()
    return {n["url"] for m in body["models"] for n in m["nodes"] if n["state"] == "online"}


def dht_urls(addrs: list[str]) -> set[str]:
    from swarmnode.dht import open_dht

    dht = open_dht(addrs, client_mode=True)
    try:
        return {p.url for p in dht.lookup("smollm2", range(30))}
    finally:
        dht.close()


class Joining(threading.Thread):
    """Starts a node of blocks 20:30 announcing to the DHT only, then waits until a DHT lookup lists it.

    A thread, so that the client goes on generating while the newcomer loads; what fails lands in ``errors``.
    """

    def __init__(self, addrs: list[str], args: list[str], log_path, started: list) -> None:
        super().__init__(name="newcomer", daemon=True)
        self.addrs, self.args, self.log_path, self.started = addrs, args, log_path, started
        self.node = None
        self.in_dht = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            self.node = start_node(
                "smollm2", "20:30", extra_args=["--backend", "torch", *self.args], log_path=self.log_path
            )
            self.started.append(self.node)
            wait_until(lambda: self.node.url in dht_urls(self.addrs), 60, "the newcomer in the DHT")
            self.in_dht.set()
        except BaseException as exc:
            self.errors.append(exc)


def test_the_swarm_outlives_its_portal(tmp_path):
    smollm2_dir = resolve_model("smollm2")
    expected = (
        AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
        .eval()
        .generate(PROMPT, pad_token_id=0, eos_token_id=None, **OPTS)[0]
        .tolist()
    )
    env = {"LAYERSWARM_VAR_DIR": str(tmp_path / "var")}  # where live_portal puts the portal's var dir too
    boot = start_dht_peer(
        tmp_path / "bootstrap.log",
        cmd=[sys.executable, str(BASE_DIR / "manage.py"), "run_dht_bootstrap"],
        env=local_env(env),
    )
    extra_nodes: list = []
    joining = None
    try:
        with live_portal(tmp_path, f"layerswarm_outage_{os.getpid()}", celery=False) as portal:
            addrs = httpx.get(f"{portal.url}/api/v1/swarm/bootstrap/", timeout=10).json()["bootstrap"]
            assert addrs == boot.addrs
            token = create_user_with_node_token(portal.env, "volunteer", "volunteer-password-1")
            dht = ["--dht", ",".join(addrs), "--dht-ttl", "15"]
            args = ["--backend", "torch", "--portal", portal.url, "--token", token, *dht]
            with LocalSwarm("smollm2", 30, 3, extra_args=args, log_dir=tmp_path) as swarm:
                wait_until(lambda: set(swarm.urls) <= health_urls(portal.url), 60, "the nodes on the health map")
                for proc in portal.procs:  # the outage: daphne (and its DHT reader's daemon) killed
                    kill_with_daemons(proc)
                outage_ends = time.monotonic() + OUTAGE_S

                model = AutoDistributedModelForCausalLM.from_pretrained(
                    str(smollm2_dir), dht=addrs, head_backend="torch"
                )
                # A fourth node joins while the portal is down, through the DHT only; the client keeps generating.
                joining = Joining(addrs, [*dht, "--dht-only"], tmp_path / "newcomer.log", extra_nodes)
                joining.start()
                victim, runs, failover_run = swarm.nodes[2], 0, None
                while failover_run is None or time.monotonic() < outage_ends:
                    out = [PROMPT]
                    for i, token in enumerate(model.stream(PROMPT, eos_token_id=None, **OPTS)):
                        out.append(token[:, None])
                        if i == 4 and failover_run is None and joining.in_dht.is_set():
                            # the client has not looked the newcomer up yet: its route still runs through the victim
                            assert model.active_session.chain[2].url == victim.url
                            kill_with_daemons(victim.process)  # an original node dies mid-generation
                            failover_run = runs
                    assert torch.cat(out, dim=1)[0].tolist() == expected, f"generation {runs}"
                    if runs == failover_run:  # failover through a DHT lookup, which found the newcomer
                        assert [e.url for e in model.last_stats.failovers] == [victim.url]
                        assert joining.node.url in {p.url for p in model.peers}
                    runs += 1
                    assert not joining.errors, joining.errors
                    assert time.monotonic() < outage_ends + 90, "the newcomer never reached the DHT"
                assert runs > failover_run + 1  # and generation went on after the failover, through the newcomer
                assert model.active_session.chain[2].url == joining.node.url
                newcomer = joining.node

                restarted = PortalProcesses(env=portal.env, port=portal.port, celery=False, migrate=False)
                restarted.log_dir = tmp_path / "logs-restarted"
                restarted.start()
                try:
                    live = {n.url for n in [*swarm.nodes, newcomer] if n.process.poll() is None}
                    assert live == {swarm.nodes[0].url, swarm.nodes[1].url, newcomer.url}
                    wait_until(lambda: live <= health_urls(restarted.url), 30, "every live node on the health map")
                finally:
                    for proc in restarted.procs:
                        kill_with_daemons(proc)  # its DHT reader's daemon too
                    restarted.stop()
    finally:
        if joining is not None:
            joining.join(300)
        for n in extra_nodes:
            if n.process.poll() is None:
                kill_with_daemons(n.process)
        boot.stop()
