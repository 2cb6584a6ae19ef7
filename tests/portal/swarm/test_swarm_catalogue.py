"""The model catalogue (#20 item 6): an admin adds a model by its source (a checkpoint directory, a wheel model,
a signed manifest in the store); its architecture, blocks, size and kind are read from it, an architecture that
cannot be split into spans is refused with what could not be mapped, and nodes register only catalogued models."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from django.contrib.auth.models import User
from django.test import Client

from portal.swarm import catalogue
from portal.swarm.catalogue import CatalogueError, inspect_source
from portal.swarm.models import SwarmModel

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, vocab_size=256)


def _save(config, out: Path, auto) -> Path:
    torch.manual_seed(0)
    auto.from_config(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory) -> Path:
    """A 4-block random-weight Qwen2 checkpoint without a chat template (a completion model)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    return _save(Qwen2Config(**TINY, num_key_value_heads=1), tmp_path_factory.mktemp("c") / "tiny-qwen2",
                 AutoModelForCausalLM)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 4-block random-weight BERT encoder (an embedding model's shape)."""
    from transformers import AutoModel, BertConfig

    config = BertConfig(**TINY, architectures=["BertModel"])
    return _save(config, tmp_path_factory.mktemp("e") / "tiny-bert", AutoModel)


@pytest.fixture
def admin_client(db) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "root-password-1"))
    return client


def _add(client: Client, name: str, source_kind: str, source: str):
    return client.post(
        "/admin/swarm/swarmmodel/add/", {"name": name, "source_kind": source_kind, "source": source, "description": ""}
    )


def _form_error(response) -> str:
    assert response.status_code == 200, "the form was accepted"
    errors = response.context["adminform"].form.errors
    assert "source" in errors, errors
    return " ".join(errors["source"])


def test_it_catalogues_a_checkpoint_directory_from_the_admin(admin_client, tiny_qwen2):
    response = _add(admin_client, "tiny-qwen2", "directory", str(tiny_qwen2))
    assert response.status_code == 302, response.content[:500]
    model = SwarmModel.objects.get(name="tiny-qwen2")
    assert (model.architecture, model.num_blocks, model.hidden_size) == ("qwen2", 4, 32)
    assert model.size_bytes == (tiny_qwen2 / "model.safetensors").stat().st_size
    assert model.kind == "completion" and not model.chat_capable and model.generates  # no chat template
    assert model.source == str(tiny_qwen2) and catalogue.checkpoint_dir(model) == tiny_qwen2
    page = admin_client.get("/admin/swarm/swarmmodel/").content.decode()
    assert "tiny-qwen2" in page and "qwen2" in page and "completion" in page


def test_it_marks_a_model_with_a_chat_template_chat_capable(tiny_qwen2, tmp_path):
    with_file = shutil.copytree(tiny_qwen2, tmp_path / "a")
    (with_file / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert inspect_source("directory", str(with_file)).kind == "chat"
    in_config = shutil.copytree(tiny_qwen2, tmp_path / "b")
    (in_config / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert inspect_source("directory", str(in_config)).kind == "chat"
    (in_config / "tokenizer_config.json").write_text(json.dumps({"chat_template": None}))
    assert inspect_source("directory", str(in_config)).kind == "completion"


def test_it_catalogues_an_encoder_as_an_embedding_model(admin_client, tiny_bert):
    assert _add(admin_client, "tiny-bert", "directory", str(tiny_bert)).status_code == 302
    model = SwarmModel.objects.get(name="tiny-bert")
    assert (model.kind, model.architecture, model.num_blocks) == ("embedding", "bert", 4)
    assert not model.generates and not model.chat_capable


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"model_type": "t5", "num_layers": 2}, "cannot be split into spans: model type 't5'"),
        ({"model_type": "wizard"}, "transformers does not know model type 'wizard'"),
        ({"hidden_size": 32}, "names no model_type"),
    ],
)
def test_it_refuses_an_architecture_it_cannot_map_naming_what(admin_client, tiny_qwen2, tmp_path, config, expected):
    odd = shutil.copytree(tiny_qwen2, tmp_path / "odd")
    (odd / "config.json").write_text(json.dumps(config))
    message = _form_error(_add(admin_client, "odd", "directory", str(odd)))
    assert expected in message and len(message) < 600  # transformers' list of every model type is cut
    assert not SwarmModel.objects.filter(name="odd").exists()


def test_it_refuses_sources_that_are_not_there(admin_client, tmp_path):
    assert "absolute path" in _form_error(_add(admin_client, "x", "directory", "models/x"))
    assert "not a checkpoint directory" in _form_error(_add(admin_client, "x", "directory", str(tmp_path)))
    assert "not a wheel model this portal knows" in _form_error(_add(admin_client, "x", "wheel", "gpt-17"))
    assert "has no model published as" in _form_error(_add(admin_client, "x", "manifest", "../../etc"))
    assert not SwarmModel.objects.filter(name="x").exists()


@pytest.fixture
def store_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _publish(model_dir: Path, home: Path, settings, trusted: bool = True) -> dict:
    from swarmnode.store.publish import publish_directory

    event = publish_directory(model_dir, home / "publisher.key", model_dir.name, home / "store")
    settings.SWARM_TRUSTED_PUBLISHERS = [event["publisher"]] if trusted else []
    return event


def test_it_catalogues_a_signed_manifest_and_pins_its_digest(admin_client, tiny_qwen2, store_home, settings):
    from swarmnode.models import Checkpoint

    event = _publish(tiny_qwen2, store_home, settings)
    assert _add(admin_client, "tiny-qwen2", "manifest", "tiny-qwen2").status_code == 302
    model = SwarmModel.objects.get(name="tiny-qwen2")
    pinned = (store_home / "store" / "refs" / "tiny-qwen2").read_text().strip()
    assert model.source == pinned and (model.num_blocks, model.kind) == (4, "completion")
    assert model.size_bytes == event["total_size"]
    # The gateway's copy is written from the store, every object checked against the manifest.
    assert Checkpoint(catalogue.checkpoint_dir(model)).num_blocks == 4

    # The attack: the name now points at other weights. The catalogue keeps the digest it checked.
    (store_home / "store" / "refs" / "tiny-qwen2").write_text("0" * 64 + "\n")
    assert catalogue.checkpoint_dir(model).name == f"manifest-{pinned[:16]}"
    assert "manifest 000" in _form_error(_add(admin_client, "other", "manifest", "tiny-qwen2"))


def test_it_refuses_a_manifest_of_a_publisher_the_swarm_does_not_trust(admin_client, tiny_qwen2, store_home, settings):
    # The attack: whoever can write into the portal's store publishes weights of their own under a model's name.
    _publish(tiny_qwen2, store_home, settings, trusted=False)
    assert "not one of the swarm's SWARM_TRUSTED_PUBLISHERS" in _form_error(
        _add(admin_client, "tiny-qwen2", "manifest", "tiny-qwen2")
    )
    assert not SwarmModel.objects.filter(name="tiny-qwen2").exists()


def test_it_refuses_a_manifest_whose_bytes_were_changed_in_the_store(tiny_qwen2, store_home, settings):
    _publish(tiny_qwen2, store_home, settings)
    digest = (store_home / "store" / "refs" / "tiny-qwen2").read_text().strip()
    stored = store_home / "store" / "objects" / digest[:2] / digest[2:]
    stored.write_bytes(stored.read_bytes().replace(b'"tiny-qwen2"', b'"tiny-qwen3"'))
    with pytest.raises(CatalogueError, match=f"manifest {digest}"):
        inspect_source("manifest", digest)


def test_it_lets_nodes_register_only_catalogued_models(admin_client, tiny_qwen2, owner_token, register):
    assert register(owner_token, model="tiny-qwen2", start_block=0, end_block=2).json()["error"] == "unknown_model"
    _add(admin_client, "tiny-qwen2", "directory", str(tiny_qwen2))
    assert register(owner_token, model="tiny-qwen2", start_block=0, end_block=2).status_code == 201
    outside = register(owner_token, model="tiny-qwen2", start_block=2, end_block=5, url="ws://127.0.0.1:40002/x")
    assert outside.json()["error"] == "span_outside_model"


@pytest.mark.model
def test_it_describes_the_default_model_as_its_migration_records_it():
    recorded = importlib.import_module("portal.swarm.migrations.0008_catalogue").SMOLLM2
    facts = inspect_source("wheel", "smollm2")
    assert (facts.source, facts.architecture, facts.kind, facts.size_bytes) == (
        recorded["source"], recorded["architecture"], recorded["kind"], recorded["size_bytes"]
    )  # fmt: skip
    assert (facts.num_blocks, facts.hidden_size) == (30, 576)


def test_only_staff_may_catalogue_a_model(owner_client, tiny_qwen2):
    # The attack: an account of a node owner adds a model of its own choosing so its nodes may serve it.
    response = owner_client.post(
        "/admin/swarm/swarmmodel/add/", {"name": "mine", "source_kind": "directory", "source": str(tiny_qwen2)}
    )
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert not SwarmModel.objects.filter(name="mine").exists()


def test_it_keeps_a_served_models_shape_while_nodes_serve_it(
    admin_client, tiny_qwen2, tiny_bert, owner_token, register
):
    _add(admin_client, "tiny-qwen2", "directory", str(tiny_qwen2))
    model = SwarmModel.objects.get(name="tiny-qwen2")
    assert register(owner_token, model="tiny-qwen2", start_block=0, end_block=4).status_code == 201
    change = {"name": "tiny-qwen2", "source_kind": "directory", "source": str(tiny_bert), "description": ""}
    response = admin_client.post(f"/admin/swarm/swarmmodel/{model.pk}/change/", change)
    assert "1 node(s) serve tiny-qwen2 now" in _form_error(response)
    assert SwarmModel.objects.get(pk=model.pk).kind == "completion"
    change["description"] = "same weights, new words"  # what does not change the shape is fine
    change["source"] = str(tiny_qwen2)
    assert admin_client.post(f"/admin/swarm/swarmmodel/{model.pk}/change/", change).status_code == 302
    assert SwarmModel.objects.get(pk=model.pk).description == "same weights, new words"
