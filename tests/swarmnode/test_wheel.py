"""The node as a package: the wheel, installed alone into a fresh virtualenv, serves and generates.

``python -m build --wheel``, a new virtualenv outside the checkout (no system site-packages, so a
dependency the wheel forgot to declare is missing there), ``pip install`` of the wheel alone. The
pins of ``requirements/node.txt`` are passed as *constraints*: they choose versions among what the
wheel declares (the tested ones) and add no package. Then ``pip check`` is clean, Django is absent,
and two ``swarmnode serve`` processes of that virtualenv plus its ``swarmnode generate`` give the
greedy tokens of local ``transformers``.

Heavy by nature: PyTorch is installed anew (≈ 1.3 GB unpacked; ≈ 4 minutes on a busy 2-core machine).
So the virtualenv is kept in the cache under a key made of everything that decides what pip installs
(the wheel's ``Requires-Dist`` and ``Requires-Python``, the constraints, the Python version): a later
run with the same key installs only the new wheel into it (``--no-deps``), and ``pip check`` proves its
declared dependencies are all there. A new or changed dependency changes the key, and a fresh
virtualenv proves it from scratch; a module imported but not declared is missing in both cases.
``--no-compile`` skips writing bytecode for every module at install time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarmnode.models import layerswarm_home

pytestmark = [pytest.mark.slow, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The old lighthouse keeper"


def _run(cmd: list, cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _serve(venv: Path, blocks: str, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    cmd = [venv / "bin" / "swarmnode", "serve", "--model", "smollm2", "--blocks", blocks, "--port", "0"]
    cmd += ["--backend", "torch", "--dtype", "float32", "--no-measure", "--relay", "never"]
    with open(log, "wb") as err:
        return subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err)


def _ready(proc: subprocess.Popen, log: Path) -> dict:
    for line in proc.stdout:  # the ready line comes once the span is loaded
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("event") == "ready":
            return msg
    proc.kill()
    raise AssertionError(f"a node exited with {proc.wait()}: {log.read_text()[-3000:]}")


def _venv_key(wheel: Path, constraints: Path) -> str:
    """What decides the packages pip installs for ``wheel``: its dependency metadata, the pins, the Python."""
    with zipfile.ZipFile(wheel) as z:
        [name] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = z.read(name).decode()
    decisive = [line for line in metadata.splitlines() if line.startswith(("Requires-Dist:", "Requires-Python:"))]
    decisive += [constraints.read_text(), sys.version]
    return hashlib.sha256("\n".join(decisive).encode()).hexdigest()[:16]


def _install(wheel: Path, constraints: Path, cwd: Path, env: dict) -> Path:
    """A virtualenv holding ``wheel`` and only what it declares (see the module docstring for the cache)."""
    root = layerswarm_home() / "test-wheel-venvs"
    venv = root / _venv_key(wheel, constraints)
    pip = [venv / "bin" / "python", "-m", "pip"]
    if (venv / "complete").is_file():
        installed = _run([*pip, "install", "--no-index", "--no-deps", "--force-reinstall", wheel], cwd, env)
        assert installed.returncode == 0, installed.stderr[-3000:]
        return venv
    for old in root.glob("*"):  # one kept at a time: each is ≈ 1.3 GB
        shutil.rmtree(old, ignore_errors=True)
    assert _run([sys.executable, "-m", "venv", venv], cwd, env).returncode == 0
    installed = _run([*pip, "install", "--no-compile", "-c", constraints, wheel], cwd, env)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    (venv / "complete").write_text(str(wheel.name))
    return venv


def test_the_wheel_alone_serves_and_generates_the_local_tokens(tmp_path, smollm2_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    dist = tmp_path / "dist"

    built = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, ROOT], ROOT, env)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = dist.glob("swarmnode-*.whl")
    venv = _install(wheel, ROOT / "requirements" / "node.txt", tmp_path, env)
    pip = [venv / "bin" / "python", "-m", "pip"]

    check = _run([*pip, "check"], tmp_path, env)
    assert check.returncode == 0, check.stdout
    python = venv / "bin" / "python"
    where = _run([python, "-c", "import swarmnode; print(swarmnode.__file__)"], tmp_path, env)
    assert where.stdout.strip().startswith(str(venv)), where  # the wheel's copy, not the checkout
    no_django = _run([python, "-c", "import django"], tmp_path, env)
    assert no_django.returncode != 0 and "No module named 'django'" in no_django.stderr

    logs = [tmp_path / "node-0.log", tmp_path / "node-1.log"]
    nodes = [_serve(venv, blocks, tmp_path, env, log) for blocks, log in zip(("0:15", "15:30"), logs, strict=True)]
    try:  # both load at once
        peers = ",".join(_ready(proc, log)["url"] for proc, log in zip(nodes, logs, strict=True))
        cmd = [venv / "bin" / "swarmnode", "generate", "--peers", peers, "--model", "smollm2", "--prompt", PROMPT]
        generated = _run([*cmd, "--greedy", "--max-new-tokens", "16", "--json"], tmp_path, env, timeout=300)
        assert generated.returncode == 0, generated.stderr[-3000:]
        got = json.loads(generated.stdout.strip().splitlines()[-1])["token_ids"]
    finally:
        for proc in nodes:
            proc.terminate()
        codes = [proc.wait(30) for proc in nodes]
    assert codes == [0] * len(nodes)

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    local = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    expected = local.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
    assert len(got) >= 8 and got == expected
