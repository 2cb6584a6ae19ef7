"""A node runs where Windows would leave it: no ``fcntl`` and no ``loop.add_signal_handler``.

Two real node processes start with a ``sitecustomize`` that makes ``fcntl`` (and ``uvloop``)
unimportable and makes every asyncio loop's ``add_signal_handler`` raise ``NotImplementedError``, as
Windows' loops do. They share a machine lock (a file lock without ``fcntl``), serve a greedy
generation that matches local ``transformers`` token for token, and stop cleanly: one on SIGTERM,
the other on SIGINT (Ctrl-C), each with exit code 0 and a "stopped" log line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm

pytestmark = pytest.mark.slow

WINDOWS_SHAPE = textwrap.dedent(
    """
    import asyncio.base_events
    import sys

    sys.modules["fcntl"] = None  # `import fcntl` raises ImportError, as on Windows
    sys.modules["uvloop"] = None  # no uvloop on Windows either

    def add_signal_handler(self, sig, callback, *args):
        raise NotImplementedError  # what Windows' event loops do

    asyncio.base_events.BaseEventLoop.add_signal_handler = add_signal_handler
    import asyncio.unix_events
    asyncio.unix_events._UnixSelectorEventLoop.add_signal_handler = add_signal_handler
    """
)


@pytest.fixture
def windows_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WINDOWS_SHAPE)
    return {"PYTHONPATH": str(site)}


def test_the_windows_shape_is_real(windows_env):
    """The environment does what the test claims: fcntl is gone and add_signal_handler raises."""
    probe = (
        "import asyncio\n"
        "try:\n    import fcntl\nexcept ImportError:\n    print('no fcntl')\n"
        "loop = asyncio.new_event_loop()\n"
        "try:\n    loop.add_signal_handler(15, print)\n"
        "except NotImplementedError:\n    print('no add_signal_handler')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=windows_env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:2] == ["no fcntl", "no add_signal_handler"], out.stderr


def test_a_node_without_fcntl_or_add_signal_handler_serves_and_stops_cleanly(tmp_path, tiny_models, windows_env):
    model_dir = tiny_models["llama"]
    env = {**windows_env, "PATH": os.environ["PATH"]}
    args = ["--backend", "torch", "--no-measure", "--relay", "never"]
    swarm = LocalSwarm(str(model_dir), 6, 2, extra_args=args, log_dir=tmp_path, env=env).start()
    try:
        (first, second) = swarm.nodes
        remote = AutoDistributedModelForCausalLM.from_pretrained(str(model_dir), peers=swarm.urls)
        local = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        ids = torch.tensor([[1, 523, 3045, 314, 2869]])
        expected = local.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        got = remote.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
        assert got.tolist() == expected.tolist()

        first.process.send_signal(signal.SIGTERM)  # systemd, docker stop, LocalSwarm.stop
        second.process.send_signal(signal.SIGINT)  # Ctrl-C
        codes = [first.process.wait(30), second.process.wait(30)]
    finally:
        swarm.stop()
    logs = [(tmp_path / "node-0-3.log").read_text(), (tmp_path / "node-3-6.log").read_text()]
    assert codes == [0, 0], logs
    assert f"signal {int(signal.SIGTERM)}: stopping" in logs[0]  # the signal.signal fallback ran
    assert f"signal {int(signal.SIGINT)}: stopping" in logs[1]
    for log in logs:
        assert log.rstrip().endswith("stopped"), log[-2000:]
        assert "Traceback" not in log
