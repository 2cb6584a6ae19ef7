"""The relay of a node behind NAT dies mid-generation (spec §9.5): the node re-attaches to its next relay and
re-announces its new address; the client fails over onto it, replays, and finishes with the tokens of an
undisturbed run.

Real processes: a portal (tracker), two ``swarmnode relay`` processes, a direct node for blocks 0-14 and a
relayed node (``--relay always --relays R1,R2``) for blocks 15-29, a client that finds both through the tracker.
"""

from __future__ import annotations

import os

import pytest
import torch

from portal.processes import create_user_with_node_token, live_portal
from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.discovery.tracker import fetch_spans
from swarmnode.launcher import start_node, start_relay
from swarmnode.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.model]


def test_it_moves_a_relayed_node_to_another_relay_and_the_generation_completes(tmp_path):
    with live_portal(tmp_path, f"layerswarm_relayfail_{os.getpid()}", celery=False) as portal:
        relays = [start_relay(log_path=tmp_path / f"relay-{i}.log") for i in (1, 2)]
        token = create_user_with_node_token(portal.env, "homelab", "homelab-password-1")
        args = ["--backend", "torch", "--dtype", "float32", "--portal", portal.url, "--token", token]
        nodes = []
        try:
            nodes.append(start_node("smollm2", "0:15", extra_args=args, log_path=tmp_path / "direct.log"))
            relayed_args = [*args, "--relay", "always", "--relays", ",".join(r.url for r in relays)]
            nodes.append(start_node("smollm2", "15:30", extra_args=relayed_args, log_path=tmp_path / "relayed.log"))
            first_address = nodes[1].address
            # Which relay comes first is the node's choice (load band, then measured round trip): kill that one.
            [used] = [r for r in relays if first_address.startswith(r.url + "/")]
            other = relays[1 - relays.index(used)]
            wait_until(lambda: len(fetch_spans(portal.url, "smollm2")) == 2, 60, "both nodes on the tracker")
            model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", portal=portal.url)
            assert [p.relay for p in sorted(model.peers, key=lambda p: p.start_block)] == [False, True]
            ids = model.tokenizer("The history of lighthouses begins with", return_tensors="pt")["input_ids"]
            opts = dict(max_new_tokens=30, do_sample=False, eos_token_id=None)
            expected = model.generate(ids, **opts)

            out = [ids]
            for i, token_ids in enumerate(model.stream(ids, **opts)):
                out.append(token_ids[:, None])
                if i == 8:
                    used.process.kill()  # the relay dies mid-generation
                    used.process.wait()
            assert torch.equal(torch.cat(out, dim=1), expected)
            [event] = model.last_stats.failovers
            assert event.url == first_address and event.blocks == (15, 30)
            [replacement] = event.replacements
            assert replacement.startswith(other.url + "/")
            assert replacement.rsplit("/", 1)[1] == first_address.rsplit("/", 1)[1]  # same node, same key id
            assert event.replay_tokens >= ids.shape[1] + 8
            spans = {s.start_block: s for s in fetch_spans(portal.url, "smollm2")}
            assert spans[15].url == replacement and spans[15].relay
        finally:
            for p in [*nodes, *relays]:
                if p.process.poll() is None:
                    p.process.kill()
                    p.process.wait()
