"""The full loop: a real portal (daphne + Celery), 3 real nodes registering with a node token, and a
client that finds them through the tracker and generates through the spans it found."""

import os
import signal

import pytest
import torch

from portal.processes import create_user_with_node_token, live_portal
from swarmnode.client import AutoDistributedModelForCausalLM, SwarmNotCovering
from swarmnode.launcher import LocalSwarm
from swarmnode.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.model]


def _health(portal_url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{portal_url}/api/v1/swarm/health/?model=smollm2", timeout=10) as r:
        return json.loads(r.read())["models"][0]


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full-loop")
    with live_portal(folder, f"layerswarm_loop_{os.getpid()}") as portal:
        portal.folder = folder
        yield portal


def test_it_generates_through_spans_found_via_the_tracker(portal):
    token = create_user_with_node_token(portal.env, "volunteer", "volunteer-password-1")
    swarm = LocalSwarm("smollm2", 30, 3, extra_args=["--portal", portal.url, "--token", token], log_dir=portal.folder)
    with swarm:
        entry = wait_until(lambda: (h := _health(portal.url))["covered"] and h, 90, "the tracker to see all 3 nodes")
        assert entry["online_nodes"] == 3
        assert sorted((n["start_block"], n["end_block"]) for n in entry["nodes"]) == [(0, 10), (10, 20), (20, 30)]
        assert all(n["owner"] == "volunteer" and n["throughput"] > 0 for n in entry["nodes"])

        via_tracker = AutoDistributedModelForCausalLM.from_pretrained("smollm2", portal=portal.url)
        assert sorted(p.url for p in via_tracker.chain()) == sorted(swarm.urls)
        ids = via_tracker.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
        out = via_tracker.generate(ids, max_new_tokens=8, do_sample=False)
        direct = AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=swarm.urls)
        assert torch.equal(out, direct.generate(ids, max_new_tokens=8, do_sample=False))
        assert out.shape[1] == ids.shape[1] + 8

        # A node that dies without saying goodbye is expired by the Celery beat task...
        swarm.nodes[1].process.send_signal(signal.SIGKILL)
        entry = wait_until(lambda: not (h := _health(portal.url))["covered"] and h, 30, "the dead node to expire")
        assert entry["banner"] == "broken: blocks 10-19 uncovered"
        # ... and clients are told plainly that the swarm no longer covers the model.
        with pytest.raises(SwarmNotCovering, match="10-19"):
            AutoDistributedModelForCausalLM.from_pretrained("smollm2", portal=portal.url)

        # A node stopped with Ctrl-C leaves at once.
        swarm.nodes[0].process.send_signal(signal.SIGINT)
        swarm.nodes[0].process.wait(timeout=30)
        wait_until(lambda: _health(portal.url)["nodes"][0]["state"] == "offline", 10, "node 0:10 to leave")
