"""The tracker refuses nodes whose blocks are not the signed manifest's of a model catalogued from one (#19)."""

from pathlib import Path

import pytest
import torch

from portal.swarm.catalogue import catalogue_model
from swarmnode.store import ObjectStore
from swarmnode.store.manifest import SignedManifest
from swarmnode.store.publish import publish_directory

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, vocab_size=256)


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("w") / "tiny-qwen2"
    AutoModelForCausalLM.from_config(Qwen2Config(**TINY, num_key_value_heads=1)).save_pretrained(out)
    return out


@pytest.fixture
def manifest(db, tiny_qwen2, tmp_path, monkeypatch, settings):
    """tiny-qwen2 published into the portal's store by a trusted publisher and catalogued from its manifest."""
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    event = publish_directory(tiny_qwen2, tmp_path / "publisher.key", "tiny-qwen2", tmp_path / "store")
    settings.SWARM_TRUSTED_PUBLISHERS = [event["publisher"]]
    catalogue_model("tiny-qwen2", "manifest", "tiny-qwen2")
    store = ObjectStore(tmp_path / "store")
    digest = (tmp_path / "store" / "refs" / "tiny-qwen2").read_text().strip()
    return SignedManifest.from_bytes(store.read(digest)).manifest


def test_a_node_of_the_signed_blocks_registers(manifest, owner_token, register):
    answer = register(owner_token, model="tiny-qwen2", start_block=0, end_block=2, manifest=manifest.digest,
                      span_digest=manifest.span_digest(0, 2))  # fmt: skip
    assert answer.status_code == 201, answer.content


@pytest.mark.parametrize("reported", ["", "0" * 64, "span of 2:4"])
def test_a_node_of_other_blocks_or_none_is_refused(manifest, owner_token, register, reported):
    digest = manifest.span_digest(2, 4) if reported == "span of 2:4" else reported  # right blocks, wrong span
    answer = register(owner_token, model="tiny-qwen2", start_block=0, end_block=2, span_digest=digest)
    assert answer.status_code == 409 and answer.json()["error"] == "weights_mismatch"
    assert "must be the signed manifest" in answer.json()["detail"]


def test_a_model_without_a_manifest_is_not_checked(db, tiny_qwen2, owner_token, register):
    catalogue_model("tiny-qwen2", "directory", str(tiny_qwen2))
    assert register(owner_token, model="tiny-qwen2", start_block=0, end_block=2).status_code == 201
