"""A node that lies about its outputs, end to end: real portal (daphne + Celery), five real nodes
registered by four owners, one of them started with the hidden ``--corrupt-fraction 1.0``.

A client that audits at 5 % catches it within the schedule's guarantee, reports signed evidence to
the portal, and routes around it; the portal checks the evidence, the node's reputation falls under
the threshold, the tracker stops listing it, and a new client never routes through it.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
import torch

from portal.processes import live_portal, manage
from swarmnode.client import AuditPolicy, AutoDistributedModelForCausalLM, EvidenceReporter
from swarmnode.client.routing import RoutingPolicy
from swarmnode.launcher import start_node
from swarmnode.testing.polling import wait_until

pytestmark = [pytest.mark.slow]

PROMPT = torch.tensor([[1, 504, 3290, 314, 2683, 30, 1012, 17]])


def _tiny_llama(out, tokenizer_from):
    """A 6-block random-weight llama (hidden 64) named after its folder."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, out / name)
    return out


def _spans(portal_url: str, model: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"{portal_url}/api/v1/models/{model}/spans/", timeout=10) as r:
        return {s["url"]: s for s in json.loads(r.read())["spans"]}


SETUP = """
from django.contrib.auth.models import User
from portal.accounts.models import ApiKey, NodeToken
from portal.swarm.models import SwarmModel
SwarmModel.objects.get_or_create(name={model!r}, defaults={{"num_blocks": 6, "hidden_size": 64}})
out = {{}}
for name in ["alice", "bob", "carol", "mallory"]:
    user, _ = User.objects.get_or_create(username=name)
    out[name] = NodeToken.create_for(user, name + "'s machine")[1]
client, _ = User.objects.get_or_create(username="dave")
out["api_key"] = ApiKey.create_for(client, "dave's client")[1]
import json; print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    from swarmnode.models import resolve_model

    folder = tmp_path_factory.mktemp("malicious")
    model_dir = _tiny_llama(folder / "tinyllama-audit", resolve_model("smollm2"))
    with live_portal(folder, f"layerswarm_malicious_{os.getpid()}") as portal:
        shell = manage(["shell", "-c", SETUP.format(model=model_dir.name)], portal.env)
        secrets = json.loads(shell.stdout.strip().splitlines()[-1])
        plan = {"a": ("0:3", "alice"), "a2": ("0:3", "bob"), "bad": ("3:6", "mallory"), "b": ("3:6", "bob")}
        plan["b2"] = ("3:6", "carol")
        nodes = {}
        try:
            for name, (blocks, owner) in plan.items():
                extra = ["--backend", "torch", "--no-measure", "--num-threads", "1"]
                extra += ["--portal", portal.url, "--token", secrets[owner]]
                extra += ["--corrupt-fraction", "1.0"] if name == "bad" else []
                nodes[name] = start_node(str(model_dir), blocks, extra_args=extra, log_path=folder / f"{name}.log")
            wait_until(lambda: len(_spans(portal.url, model_dir.name)) == 5, 60, "all five nodes on the tracker")
            yield portal, model_dir, nodes, secrets["api_key"]
        finally:
            for n in nodes.values():
                n.process.kill()
                n.process.wait()


def test_it_catches_reports_and_shuns_a_lying_node(swarm):
    portal, model_dir, nodes, api_key = swarm
    bad = nodes["bad"].url
    reporter = EvidenceReporter(portal.url, api_key)
    client = AutoDistributedModelForCausalLM.from_pretrained(
        str(model_dir),
        portal=portal.url,
        audit=AuditPolicy(rate=0.05, seed=11),
        reporter=reporter,
        routing=RoutingPolicy(rtt_weight=0.0),  # equal costs: the first node listed wins ...
    )
    client.peers.sort(key=lambda p: p.url != bad)  # ... so the session starts on the lying node
    assert bad in [p.url for p in client.chain()]
    client.generate(PROMPT, max_new_tokens=60, do_sample=False, eos_token_id=None)
    audits = client.last_stats.audits
    assert audits.caught == [bad] and audits.first_detection_step <= AuditPolicy(rate=0.05).max_gap
    assert bad not in [p.url for p in client.chain()]  # this client routes around it at once
    reporter.flush()
    assert not reporter.errors
    # This client pays with an API key, so it holds no receipts of these nodes: its step counts are not evidence
    # (#17 finding 6) and the portal says so; the signed audit evidence is what moves the score.
    assert all(r.endswith("no_dealings") for r in reporter.refused)

    listed = _spans(portal.url, model_dir.name)
    assert bad not in listed  # the portal checked the signed evidence: under the threshold, off the list
    assert all(entry["reputation"] >= 0.5 for entry in listed.values())
    fresh = AutoDistributedModelForCausalLM.from_pretrained(str(model_dir), portal=portal.url)
    assert bad not in [p.url for p in fresh.peers]  # other clients never see it again
    local = _local_greedy(model_dir)
    assert fresh.generate(PROMPT, max_new_tokens=12, do_sample=False, eos_token_id=None).tolist() == local


def _local_greedy(model_dir) -> list:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model.generate(PROMPT, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0).tolist()
