"""Models load from local files only (``local_files_only=True`` where they load), not by an environment side effect."""

import os
import subprocess
import sys


def test_importing_the_models_package_leaves_the_environment_alone():
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in names}
    code = f"import os, swarmnode.models; print(*(os.environ.get(k) for k in {names!r}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None"]
