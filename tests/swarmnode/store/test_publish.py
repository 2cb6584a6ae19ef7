"""Publishing checkpoints into the store: per-block objects, dedup across publishes and fine-tunes, signed
manifests that a tampered copy or an unknown key cannot pass, and a round trip back to identical logits."""

from __future__ import annotations

import json

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from swarmnode.models.registry import resolve_model
from swarmnode.store import (
    ManifestError,
    ObjectStore,
    SignedManifest,
    TrustedPublishers,
    UntrustedManifest,
    load_manifest,
    materialize,
    publish,
)
from swarmnode.store.manifest import publisher_key_text

TINY = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return path


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def _trusted(key) -> TrustedPublishers:
    return TrustedPublishers([publisher_key_text(key.public_key().public_bytes_raw())])


def test_publish_stores_one_object_per_block_and_nothing_twice(tiny_checkpoint, key, tmp_path):
    store = ObjectStore(tmp_path / "store", cap_bytes=1 << 30)
    first = publish(tiny_checkpoint, store, key, "tiny")
    manifest = first.signed.manifest
    assert len(manifest.blocks) == 6 and manifest.layer_prefix == "model.layers"
    assert first.objects == 8 and first.added == 8  # tokenizer, client part, 6 blocks
    again = publish(tiny_checkpoint, store, key, "tiny")
    assert again.added == 0 and again.bytes_added == 0
    assert again.signed.manifest.digest == manifest.digest  # same weights, same identity

    # A fine-tune that changed only the top two blocks adds exactly two objects.
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    for name in tensors:
        if name.startswith(("model.layers.4.", "model.layers.5.")):
            tensors[name] = tensors[name] + 0.01
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    for file in tiny_checkpoint.iterdir():
        if file.name != "model.safetensors":
            (tuned / file.name).write_bytes(file.read_bytes())
    save_file(tensors, tuned / "model.safetensors", metadata={"format": "pt"})
    fine_tune = publish(tuned, store, key, "tiny-tuned")
    assert fine_tune.added == 2
    old, new = manifest.blocks, fine_tune.signed.manifest.blocks
    assert old[:4] == new[:4] and old[4] != new[4] and old[5] != new[5]


def test_the_store_puts_back_a_checkpoint_with_identical_logits(tiny_checkpoint, key, tmp_path):
    store = ObjectStore(tmp_path / "store", cap_bytes=1 << 30)
    publish(tiny_checkpoint, store, key, "tiny")
    manifest = load_manifest(store, "tiny", _trusted(key))
    rebuilt = materialize(store, manifest, tmp_path / "rebuilt")
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    want = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()(ids).logits
    got = AutoModelForCausalLM.from_pretrained(rebuilt).eval()(ids).logits
    assert torch.equal(want, got)
    span = materialize(store, manifest, tmp_path / "span", blocks=(2, 4))
    assert {n.split(".")[2] for n in load_file(span / "model.safetensors")} == {"2", "3"}


def test_a_tampered_manifest_or_an_unknown_publisher_is_refused(tiny_checkpoint, key, tmp_path):
    store = ObjectStore(tmp_path / "store", cap_bytes=1 << 30)
    signed = publish(tiny_checkpoint, store, key, "tiny").signed
    trusted = _trusted(key)
    assert trusted.check(SignedManifest.from_bytes(signed.to_bytes())) == signed.manifest

    # A peer swaps block 3 for its own bytes (and fixes up the piece list): the signature no longer checks.
    document = json.loads(signed.to_bytes())
    document["manifest"]["blocks"][3] = document["manifest"]["blocks"][2]
    with pytest.raises(ManifestError, match="does not check"):
        trusted.check(SignedManifest.from_bytes(json.dumps(document).encode()))

    # The same weights re-signed by a stranger's key: well formed, correctly signed, not trusted.
    stranger = Ed25519PrivateKey.generate()
    forged = publish(tiny_checkpoint, store, stranger, "tiny-forged").signed
    assert forged.signature_valid()
    with pytest.raises(UntrustedManifest, match="not a trusted publisher"):
        trusted.check(forged)
    with pytest.raises(UntrustedManifest):
        load_manifest(store, "tiny-forged", trusted)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"[]", b"{}", b"x" * (5 << 20), b'{"manifest": {}, "public_key": "", "signature": ""}', b"\xff\xfe"],
)
def test_malformed_manifests_are_clear_errors(garbage):
    with pytest.raises(ManifestError):
        SignedManifest.from_bytes(garbage)


@pytest.mark.model
def test_publishing_smollm2_makes_30_block_objects_and_a_second_publish_adds_nothing(key, tmp_path):
    store = ObjectStore(tmp_path / "store", cap_bytes=2 << 30)
    model_dir = resolve_model("smollm2")
    first = publish(model_dir, store, key, "smollm2")
    assert len(first.signed.manifest.blocks) == 30 and first.added == 32
    assert publish(model_dir, store, key, "smollm2").added == 0


def test_the_cli_publishes_a_checkpoint_and_reports_what_it_added(tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "swarmnode", "models", "publish", str(tiny_checkpoint),
        "--key", str(tmp_path / "pub.key"), "--store", str(tmp_path / "store"), "--name", "tiny",
    ]  # fmt: skip
    events = [json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout) for _ in (1, 2)]
    assert events[0]["blocks"] == 6 and events[0]["added"] == 8 and events[1]["added"] == 0
    assert events[0]["manifest"] == events[1]["manifest"] and events[0]["publisher"].startswith("ed25519:")
    assert (tmp_path / "pub.key").stat().st_mode & 0o077 == 0
