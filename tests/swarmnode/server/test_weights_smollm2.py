"""Cold join of the default model (issue #19): three nodes serve SmolLM2 from the store it was published into;
a fourth starts with an empty store, no model and pip blocked, fetches blocks 10:20 from two of them in
parallel (each piece checked), serves them, and greedy generation through it equals local ``transformers``."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.launcher import start_node
from swarmnode.store import ObjectStore, publish
from swarmnode.store.fetching import http_base
from swarmnode.store.manifest import publisher_key_text
from swarmnode.store.publish import load_or_create_key

pytestmark = [pytest.mark.slow, pytest.mark.model]

NO_PIP = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": ""}
TORCH = ["--backend", "torch", "--no-measure"]


@pytest.fixture(scope="module")
def cold_swarm(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cold-join")
    signed = publish(smollm2_dir, ObjectStore(root / "origin"), load_or_create_key(root / "pub.key"), "smollm2").signed
    key = publisher_key_text(signed.public_key)
    origin = [*TORCH, "--store", str(root / "origin"), "--trust-key", key]
    home = {"LAYERSWARM_HOME": str(root / "home")}
    nodes = {}
    try:
        for name, blocks, extra in (("a", "0:10", ["--seed-cache"]), ("b", "10:20", []), ("c", "20:30", [])):
            nodes[name] = start_node("smollm2", blocks, extra_args=[*origin, *extra], env=home,
                                     log_path=root / f"{name}.log")  # fmt: skip
        # A seeds its whole store (--seed-cache), B its own blocks 10:20: the two holders of D's span.
        nodes["d"] = start_node(
            signed.manifest.digest, "10:20", log_path=root / "d.log",
            env={**NO_PIP, "LAYERSWARM_HOME": str(root / "d")},
            extra_args=[*TORCH, "--store", str(root / "d" / "store"), "--trust-key", key,
                        "--peers", f"{nodes['a'].url},{nodes['b'].url}"],
        )  # fmt: skip
        yield root, signed.manifest, nodes
    finally:
        for node in nodes.values():
            node.stop()


def test_the_fourth_node_fetched_only_its_span_from_two_peers(cold_swarm):
    root, manifest, nodes = cold_swarm
    line = next(x for x in (root / "d.log").read_text().splitlines() if '"event": "fetched"' in x)
    report = json.loads(line[line.index("{") :])
    print("cold join:", json.dumps(report))
    assert set(report["bytes_by_peer"]) == {http_base(nodes["a"].url), http_base(nodes["b"].url)}
    assert min(report["bytes_by_peer"].values()) > 0 and report["verified"]
    assert report["bytes"] == sum(r.size for r in manifest.span_objects(10, 20))
    held = {o.digest for o in ObjectStore(root / "d" / "store").list() if o.kind != "manifest"}
    assert held == {r.digest for r in manifest.span_objects(10, 20)}
    assert not (root / "d" / "models").exists() and not (root / "d" / "wheels").exists()


def test_generation_through_the_fourth_node_equals_local_transformers(cold_swarm, smollm2_dir):
    _, manifest, nodes = cold_swarm
    peers = [nodes["a"].url, nodes["d"].url, nodes["c"].url]
    remote = AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=peers, manifest=manifest)
    assert [p.url for p in remote.chain()] == peers
    ids = remote.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )["input_ids"]  # fmt: skip
    local = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    expected = local.generate(ids, max_new_tokens=24, do_sample=False)
    got = remote.generate(ids, max_new_tokens=24, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert "Paris" in remote.tokenizer.decode(got[0, ids.shape[1] :])
