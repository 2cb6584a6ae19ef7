"""bench/profiles.py: py-spy's folded stacks parsed, attributed to process roles and categories, and a real
profiled run whose window keeps set-up out and follows the processes the benchmark starts."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import profiles  # noqa: E402 - bench/profiles.py, a script's module
import report  # noqa: E402

NODE = "/v/bin/python -m swarmnode serve --model smollm2 --port 0 --blocks 0:10"
RAW = (
    'process 10:"/v/bin/python -m swarmnode bench --json";process 11:"' + NODE + '";'
    "serve (/r/swarmnode/server/app.py);Session.run_with_iobinding (/v/site-packages/onnxruntime/capi/x.py) 70\n"
    'process 10:"/v/bin/python -m swarmnode bench --json";process 11:"' + NODE + '";'
    "serve (/r/swarmnode/server/app.py);pack (/v/site-packages/msgpack/fallback.py) 30\n"
    'process 10:"/v/bin/python -m swarmnode bench --json";main (/r/swarmnode/cli/__init__.py);'
    "DistributedModelForCausalLM.stream (/r/swarmnode/client/model.py);"
    "BlockingWebSocket._flush (/r/swarmnode/client/wsclient.py) 40\n"
    'process 10:"/v/bin/python -m swarmnode bench --json";main (/r/swarmnode/cli/__init__.py);'
    "generate (/v/site-packages/transformers/generation/utils.py) 10\n"
    # a command line holding a newline and a ';' (python -c), and a stack with no Python frame
    'process 10:"/v/bin/python -m swarmnode bench --json";process 12:"/v/bin/python -c import a; a.b()\nx = 1" 5\n'
)


def test_it_parses_process_chains_whose_command_lines_hold_newlines_and_semicolons():
    samples = profiles.parse_raw(RAW)
    assert [s.count for s in samples] == [70, 30, 40, 10, 5]
    assert samples[0].processes == [(10, "/v/bin/python -m swarmnode bench --json"), (11, NODE)]
    assert samples[0].frames[-1].startswith("Session.run_with_iobinding")
    assert samples[4].processes[-1] == (12, "/v/bin/python -c import a; a.b()\nx = 1")
    assert samples[4].frames == []


def test_it_attributes_time_to_roles_and_what_they_did():
    summary = profiles.summarize(profiles.parse_raw(RAW), seconds=2.0)
    roles = {r["role"]: r for r in summary["roles"]}
    assert set(roles) == {"node", "client (swarm)", "client (reference, set-up)", "other"}
    node = roles["node"]
    assert node["busy_s"] == 1.0 and node["busy_cores"] == 0.5 and node["share_pct"] == round(100 * 100 / 155, 1)
    assert node["categories"] == [["ONNX Runtime (arithmetic)", 70.0], ["msgpack", 30.0]]
    assert roles["client (swarm)"]["categories"] == [["swarmnode.client.wsclient", 100.0]]
    assert roles["client (swarm)"]["frames"][0][0] == "BlockingWebSocket._flush (swarmnode/client/wsclient.py)"
    assert roles["client (reference, set-up)"]["categories"] == [["PyTorch / transformers (arithmetic)", 100.0]]
    assert summary["busy_s"] == 1.6  # 155 samples at 100 a second


def test_it_names_the_roles_of_the_portal_and_the_nodes():
    assert profiles.role_of([(1, "python bench/portal_heartbeats.py"), (2, "python -m gunicorn portal.wsgi")]) == (
        "portal (gunicorn)"
    )
    assert profiles.role_of([(1, "x"), (2, "python -m daphne portal.asgi:application")]) == "portal (daphne)"
    assert profiles.role_of([(1, "x"), (2, "python manage.py run_gateway")]) == "gateway"
    assert profiles.role_of([(1, "x"), (2, "python -m swarmnode serve --model m")]) == "node"
    assert profiles.role_of([(1, "python -m swarmnode bench")]) == "client"


def _py_spy_can_attach() -> bool:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        done = subprocess.run([profiles.py_spy(), "dump", "--pid", str(child.pid)], capture_output=True, timeout=30)
        return done.returncode == 0
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not _py_spy_can_attach(), reason="py-spy may not attach to processes here (ptrace refused)")
def test_a_real_run_is_sampled_only_inside_its_window_and_follows_its_children(tmp_path):
    script = tmp_path / "workload.py"
    script.write_text(
        textwrap.dedent(
            """
            import subprocess, sys, time

            def set_up():  # before the window: must not be sampled
                end = time.time() + 2.5
                while time.time() < end:
                    sum(range(1000))

            def measured():
                child = subprocess.Popen([sys.executable, "-c", "import json, time\\nend = time.time() + 3\\n"
                                          "while time.time() < end: json.dumps(list(range(500)))"])
                end = time.time() + 3
                while time.time() < end:
                    sorted(range(2000), key=lambda x: -x)
                child.wait()

            set_up()
            measured()
            time.sleep(2)
            """
        )
    )
    target = profiles.Target("9", "test", [str(script)], timeout_s=60, window=r"measured \(")
    record = profiles.profile("test", target, tmp_path)
    assert "error" not in record, record
    assert record["stretches"] == 1
    assert 2.0 <= record["seconds"] <= 6.0
    roles = {r["role"]: r for r in record["roles"]}
    assert set(roles) >= {"client (reference, set-up)", "other"}  # the script itself, and its child
    assert any(c == "JSON" for c, _ in roles["other"]["categories"])
    frames = [f for r in record["roles"] for f, _ in r["frames"]]
    assert not any(f.startswith("set_up ") for f in frames), frames


def test_the_report_shows_each_goals_profile_and_a_failed_one(tmp_path):
    summary = profiles.summarize(profiles.parse_raw(RAW), seconds=2.0)
    run = {
        "benchmarks": {
            "profiles": {
                "status": "ok",
                "result": {
                    "sessions": {"goal": "2", "what": "8 sessions", **summary},
                    "chat": {"goal": "3", "what": "20 chats", "error": "Traceback...\nRuntimeError: no portal"},
                },
            }
        }
    }
    text = "\n".join(report.profile_markdown(run))
    assert "**Goal 2: 8 sessions** (`sessions`): 2.0 s sampled" in text
    assert "| node | 1 | 0.5 | 64.5% | ONNX Runtime (arithmetic) 70.0%; msgpack 30.0% |" in text
    assert "**Goal 3: 20 chats** (`chat`): not profiled (RuntimeError: no portal)" in text
    assert report.profile_markdown({"benchmarks": {}}) == []
