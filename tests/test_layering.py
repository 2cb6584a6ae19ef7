"""The architecture's one-way arrows (docs/architecture.md), checked by import-linter on every run.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); a deliberate violation in a copy
of the tree shows that they can fail. Sizes guard against god classes growing back.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_FILE_LINES = 600  # outside migrations and tests
MAX_CLASS_LINES = 300


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_layering_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("swarmnode/protocol/errors.py", "import swarmnode.server.node", "protocol imports nothing of ours"),
        ("swarmnode/client/latency.py", "import swarmnode.runtime.cache", "the client never imports the server"),
        ("swarmnode/models/checkpoint.py", "import swarmnode.runtime.backend", "models never import the runtime"),
        ("swarmnode/discovery/peers.py", "import portal.swarm.models", "swarmnode never imports the portal"),
        ("portal/views.py", "import swarmnode.server.relay_hub", "the portal imports only swarmnode's public"),
        ("swarmnode/trust/identity.py", "import swarmnode.discovery.peers", "swarmnode layers point one way"),
    ],
)
def test_a_deliberate_violation_breaks_its_contract(tmp_path, module, line, contract):
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "*.pyc")
    for name in ("swarmnode", "portal"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # deliberate violation\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and module.removesuffix(".py").replace("/", ".") in broken


def _sources():
    for path in sorted([*ROOT.glob("swarmnode/**/*.py"), *ROOT.glob("portal/**/*.py")]):
        if "migrations" not in path.parts and "__pycache__" not in path.parts:
            yield path


def test_no_file_or_class_grows_into_a_god_object():
    too_long = []
    for path in _sources():
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} class {node.name}: "
                    f"{node.end_lineno - node.lineno + 1} lines"
                )
    assert not too_long, "split these by responsibility:\n" + "\n".join(too_long)


def duplicate_test_basenames(tests: Path) -> dict[str, list[str]]:
    """Test modules sharing a file name: pytest's rootdir-relative import makes the second one an error."""
    seen: dict[str, list[str]] = {}
    for path in sorted(tests.rglob("test_*.py")):
        if "__pycache__" not in path.parts:
            seen.setdefault(path.name, []).append(str(path.relative_to(tests)))
    return {name: paths for name, paths in seen.items() if len(paths) > 1}


def test_every_test_module_has_its_own_file_name():
    # The test directories have no __init__.py, so two test_failover.py files stop the whole collection.
    assert duplicate_test_basenames(ROOT / "tests") == {}


def test_a_second_module_of_the_same_name_is_found(tmp_path):
    for folder in ("client", "bench"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test_failover.py").write_text("")
    found = duplicate_test_basenames(tmp_path)
    assert found == {"test_failover.py": ["bench/test_failover.py", "client/test_failover.py"]}
