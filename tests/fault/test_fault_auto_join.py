"""The only node of a span dies mid-generation; a new node joins with ``--blocks auto`` and the client resumes.

Real processes: a portal (daphne, scratch database), three SmolLM2 nodes announcing to it, a client
that finds them through the tracker. Killing the sole server of blocks 10-19 leaves the client
waiting for cover; the newcomer reads the tracker, picks exactly the uncovered window, and the
client replays its history into it and finishes with the tokens of an undisturbed run.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from portal.processes import create_user_with_node_token, live_portal
from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.discovery.tracker import fetch_spans
from swarmnode.launcher import start_node
from swarmnode.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.model]

NODE_ARGS = ["--backend", "torch", "--dtype", "float32"]


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auto-join")
    with live_portal(folder, f"layerswarm_autojoin_{os.getpid()}", celery=False) as portal:
        portal.folder = folder
        yield portal


def test_it_fills_the_dead_span_with_a_blocks_auto_node_and_the_client_resumes(portal):
    token = create_user_with_node_token(portal.env, "volunteer", "volunteer-password-1")
    announce = ["--portal", portal.url, "--token", token]
    other = create_user_with_node_token(portal.env, "newcomer", "newcomer-password-1")  # another machine
    logs = portal.folder
    nodes = [
        start_node("smollm2", b, extra_args=NODE_ARGS + announce, log_path=logs / f"node-{b}.log")
        for b in ("0:10", "10:20", "20:30")
    ]
    newcomer = {}
    try:
        wait_until(lambda: len(fetch_spans(portal.url, "smollm2")) == 3, 60, "the tracker to list 3 online nodes")
        model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", portal=portal.url)
        ids = model.tokenizer("The history of lighthouses begins with", return_tensors="pt")["input_ids"]
        opts = dict(max_new_tokens=40, do_sample=False, eos_token_id=None)
        expected = model.generate(ids, **opts)

        def join():
            time.sleep(1.0)  # the client is waiting for cover by now
            newcomer["node"] = start_node(
                "smollm2",
                "auto",
                extra_args=NODE_ARGS + ["--portal", portal.url, "--token", other, "--num-blocks", "10"],
                log_path=logs / "new.log",
            )

        joiner = threading.Thread(target=join)
        out = [ids]
        for i, token in enumerate(model.stream(ids, **opts)):
            out.append(token[:, None])
            if i == 10:
                nodes[1].process.kill()  # the sole server of blocks 10-19
                nodes[1].process.wait()
                joiner.start()
        joiner.join()
        new = newcomer["node"]
        assert (new.ready["start_block"], new.ready["end_block"]) == (10, 20)
        assert torch.equal(torch.cat(out, dim=1), expected)
        [event] = model.last_stats.failovers
        assert event.blocks == (10, 20) and event.replacements == [new.url]
        assert event.stall_s > 1.0  # it really waited for the newcomer
    finally:
        for n in [*nodes, newcomer.get("node")]:
            if n is not None and n.process.poll() is None:
                n.process.kill()
                n.process.wait()
