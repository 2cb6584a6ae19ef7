"""Publishing a checkpoint into the store, and putting a checkpoint back together from it.

:func:`publish` splits a Hugging Face checkpoint directory (``config.json``, ``*.safetensors``, tokenizer
files) into content-addressed objects: one safetensors file per transformer block (tensor names relative
to the block, so equal blocks are equal bytes), one for everything outside the blocks (embeddings, final
norm, head), one canonical JSON object holding the tokenizer's files. Objects the store already holds are
not written again: a second publish of the same weights adds nothing, a fine-tune that changed two blocks
adds two objects. The signed manifest is stored as an object too, and the model's name points to it.

:func:`materialize` writes a checkpoint directory back from the store (all blocks or a span's), checking
every object's hash on the way, so what is loaded is exactly what the manifest names.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmnode.store.manifest import (
    PIECE_SIZE,
    Manifest,
    ManifestError,
    ObjectRef,
    SignedManifest,
    TrustedPublishers,
    canonical_json,
    key_id,
    piece_hashes,
)
from swarmnode.store.objects import ObjectStore

__all__ = [
    "PublishResult",
    "find_layer_prefix",
    "load_manifest",
    "load_or_create_key",
    "materialize",
    "publish",
    "publish_directory",
    "span_block_digests",
    "write_ref",
]

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".onnx", ".data")
MAX_TOKENIZER_FILE = 64 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BLOCK = re.compile(r"^(.+?)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` did: the signed manifest, and how much was new to the store."""

    signed: SignedManifest
    objects: int  # objects the model has (tokenizer, client part, blocks)
    added: int  # of those, written now (the rest were already stored)
    bytes_added: int


def find_layer_prefix(names: list[str], num_blocks: int | None = None) -> tuple[str, int]:
    """The tensor-name prefix of the checkpoint's block list and its block count.

    The block list is the ``PREFIX.<i>.`` family with the most distinct indices (``model.layers``,
    ``transformer.h``, ``gpt_neox.layers``...), indices running 0..N-1.

    Raises:
        ValueError: no numbered family, gaps in the numbering, or not ``num_blocks`` blocks.
    """
    indices: dict[str, set[int]] = {}
    for name in names:
        if match := _BLOCK.match(name):
            indices.setdefault(match.group(1), set()).add(int(match.group(2)))
    if not indices:
        raise ValueError("no numbered block list (PREFIX.<i>.<tensor>) among the checkpoint's tensors")
    prefix = max(indices, key=lambda p: (len(indices[p]), -len(p)))
    found = indices[prefix]
    if found != set(range(len(found))):
        raise ValueError(f"the blocks under {prefix!r} are not numbered 0..{len(found) - 1}")
    if num_blocks is not None and len(found) != num_blocks:
        raise ValueError(f"{prefix!r} has {len(found)} blocks, the config says {num_blocks}")
    return prefix, len(found)


def _tensors(model_dir: Path) -> dict:
    from safetensors import safe_open  # torch loads only when weights are read

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} has no *.safetensors files")
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name in tensors:
                    raise ValueError(f"tensor {name} appears in two files")
                tensors[name] = f.get_tensor(name)
    return tensors


def _pack(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({name: tensors[name].contiguous() for name in sorted(tensors)})


def _tokenizer_object(model_dir: Path) -> bytes:
    files = {}
    for path in sorted(model_dir.iterdir()):
        if not path.is_file() or path.name in ("config.json", "layerswarm.json") or path.name.startswith("."):
            continue
        if path.name.endswith(WEIGHT_SUFFIXES) or path.name.endswith(".index.json"):
            continue
        if path.stat().st_size > MAX_TOKENIZER_FILE:
            raise ValueError(f"{path.name} is too large for a tokenizer file")
        try:
            files[path.name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path.name} is not text: only tokenizer/config text files go with a model") from None
    return canonical_json({"files": files})


def publish(
    model_dir: str | Path, store: ObjectStore, key: Ed25519PrivateKey, name: str, piece_size: int = PIECE_SIZE
) -> PublishResult:
    """Split the checkpoint in ``model_dir`` into objects in ``store`` and sign its manifest with ``key``.

    Raises:
        ValueError: not a checkpoint directory this can split (no config, no block list, a bad name).
    """
    model_dir = Path(model_dir)
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r}: letters, digits, '.', '_' and '-' only")
    config = json.loads((model_dir / "config.json").read_text())
    tensors = _tensors(model_dir)
    prefix, count = find_layer_prefix(list(tensors), config.get("num_hidden_layers"))
    blocks: list[dict] = [{} for _ in range(count)]
    client = {}
    for tensor_name, tensor in tensors.items():
        match = _BLOCK.match(tensor_name)
        if match and match.group(1) == prefix:
            blocks[int(match.group(2))][match.group(3)] = tensor
        else:
            client[tensor_name] = tensor
    dtype = Counter(str(t.dtype).removeprefix("torch.") for t in tensors.values()).most_common(1)[0][0]
    added = bytes_added = 0

    def put(data: bytes, kind: str) -> ObjectRef:
        nonlocal added, bytes_added
        digest, new = store.put(data, kind)
        added += new
        bytes_added += len(data) if new else 0
        return ObjectRef(digest, len(data), piece_hashes(data, piece_size))

    tokenizer = put(_tokenizer_object(model_dir), "tokenizer")
    client_ref = put(_pack(client), "client")
    block_refs = tuple(put(_pack(block), "block") for block in blocks)
    public = key.public_key().public_bytes_raw()
    manifest = Manifest(
        name=name, config=config, layer_prefix=prefix, blocks=block_refs, client=client_ref, tokenizer=tokenizer,
        dtype=dtype, publisher=key_id(public), piece_size=piece_size,
    )  # fmt: skip
    signed = SignedManifest.sign(manifest, key)
    digest, _ = store.put(signed.to_bytes(), "manifest")
    write_ref(store, name, digest)
    write_ref(store, manifest.digest, digest)  # found by the model's identity too (serve --model <id>)
    return PublishResult(signed, objects=len(manifest.objects()), added=added, bytes_added=bytes_added)


def write_ref(store: ObjectStore, name: str, digest: str) -> None:
    """Name the manifest object ``digest`` ``name`` in ``store`` (``refs/NAME``; replaced atomically)."""
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r}: letters, digits, '.', '_' and '-' only")
    refs = store.root / "refs"
    refs.mkdir(exist_ok=True)
    tmp = refs / f".{name}.tmp"
    tmp.write_text(digest + "\n")
    tmp.replace(refs / name)


def load_manifest(store: ObjectStore, name: str, trusted: TrustedPublishers) -> Manifest:
    """The trusted manifest the store knows by ``name`` (a published name, or a manifest object's digest).

    Raises:
        KeyError: no such model in the store.
        ManifestError / UntrustedManifest: see :meth:`TrustedPublishers.check`.
    """
    ref = store.root / "refs" / name if _NAME.match(name) else None
    digest = ref.read_text().strip() if ref is not None and ref.exists() else name
    try:
        data = store.read(digest)
    except (KeyError, ValueError):
        raise KeyError(f"the store has no model {name!r}") from None
    return trusted.check(SignedManifest.from_bytes(data))


def materialize(
    store: ObjectStore, manifest: Manifest, dest: str | Path, blocks: tuple[int, int] | None = None
) -> Path:
    """Write a checkpoint directory for ``manifest`` (all blocks, or the span ``blocks``) to ``dest``.

    Every object is re-hashed as it is read (:meth:`ObjectStore.read`); the weights file holds the client
    part and the chosen blocks under their original names.

    Raises:
        ObjectMissing: an object is not in the store (fetch it first).
    """
    from safetensors.torch import load, save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = json.loads(store.read(manifest.tokenizer.digest))["files"]
    for file_name, text in files.items():
        if "/" in file_name or "\\" in file_name or file_name.startswith("."):
            raise ManifestError(f"tokenizer file name {file_name!r} is not a plain file name")
        (dest / file_name).write_text(text, encoding="utf-8")
    (dest / "config.json").write_text(json.dumps(manifest.config, indent=2))
    start, end = blocks if blocks is not None else (0, len(manifest.blocks))
    tensors = dict(load(store.read(manifest.client.digest))) if blocks is None else {}
    for index in range(start, end):
        for suffix, tensor in load(store.read(manifest.blocks[index].digest)).items():
            tensors[f"{manifest.layer_prefix}.{index}.{suffix}"] = tensor
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def span_block_digests(model_dir: str | Path, start: int, end: int, prefix: str | None = None) -> list[str]:
    """The object hashes of blocks [start, end) of the checkpoint in ``model_dir``, computed from its tensors
    exactly as :func:`publish` packs them: what a node reports it loaded, to compare with a manifest.

    Raises:
        ValueError: the checkpoint has no such blocks.
    """
    from safetensors import safe_open

    from swarmnode.store.objects import sha256_hex

    files = sorted(Path(model_dir).glob("*.safetensors"))
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            where.update({name: file for name in f.keys()})  # noqa: SIM118 (safe_open is not a mapping)
    if prefix is None:  # the numbered family with the most blocks (a span's checkout holds only some)
        found: dict[str, set[int]] = {}
        for name in where:
            if match := _BLOCK.match(name):
                found.setdefault(match.group(1), set()).add(int(match.group(2)))
        if not found:
            raise ValueError(f"{model_dir} has no numbered block list (PREFIX.<i>.<tensor>)")
        prefix = max(found, key=lambda p: (len(found[p]), -len(p)))
    blocks: list[dict] = [{} for _ in range(start, end)]
    by_file: dict[Path, list[tuple[str, int, str]]] = {}
    for name, file in where.items():
        match = _BLOCK.match(name)
        if match and match.group(1) == prefix and start <= int(match.group(2)) < end:
            by_file.setdefault(file, []).append((name, int(match.group(2)) - start, match.group(3)))
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for name, index, suffix in names:
                blocks[index][suffix] = f.get_tensor(name)
    if any(not block for block in blocks):
        raise ValueError(f"{model_dir} lacks some of blocks {start}:{end} under {prefix!r}")
    return [sha256_hex(_pack(block)) for block in blocks]


def load_or_create_key(path: str | Path) -> Ed25519PrivateKey:
    """The publisher key stored at ``path`` (32 raw private bytes), created there (mode 0600) when missing.

    Raises:
        ValueError: the file exists but is not a 32-byte key.
    """
    import os

    path = Path(path)
    if path.exists():
        raw = path.read_bytes()
        if len(raw) != 32:
            raise ValueError(f"{path} is not a publisher key file (expected 32 bytes)")
        return Ed25519PrivateKey.from_private_bytes(raw)
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes_raw())
    return key


def publish_directory(
    directory: str | Path, key_file: str | Path, name: str, store_dir: str | Path, cache_size: str | None = None
) -> dict:
    """``swarmnode models publish``: publish ``directory`` into the store at ``store_dir`` with the key in
    ``key_file`` (created when missing); returns the one JSON event the command prints."""
    from humanfriendly import parse_size

    from swarmnode.store.manifest import publisher_key_text

    store = ObjectStore(store_dir, parse_size(cache_size) if cache_size else None)
    result = publish(directory, store, load_or_create_key(key_file), name)
    manifest = result.signed.manifest
    return {
        "event": "published", "name": manifest.name, "manifest": manifest.digest, "blocks": len(manifest.blocks),
        "objects": result.objects, "added": result.added, "bytes_added": result.bytes_added,
        "total_size": manifest.total_size, "publisher": publisher_key_text(result.signed.public_key),
    }  # fmt: skip
