"""bench/all.py: finding each benchmark's JSON in what it printed, and carrying on when one fails."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import all as bench_all  # noqa: E402 - bench/all.py, a script


def test_it_reads_a_one_line_report_after_log_lines():
    out = "Loading weights: 100%\n" + json.dumps({"ratio": 1.2, "tokens_equal": True}) + "\n"
    assert bench_all.last_json(out) == {"ratio": 1.2, "tokens_equal": True}


def test_it_reads_an_indented_report_and_a_list():
    report = {"runs": [{"saturation": {"p99_ms": 12.5}}], "cpu_cores": 2}
    assert bench_all.last_json("portal http://x\n" + json.dumps(report, indent=2) + "\n") == report
    assert bench_all.last_json(json.dumps([{"sessions": 1}, {"sessions": 8}])) == [{"sessions": 1}, {"sessions": 8}]


def test_it_takes_the_last_of_several_reports_and_none_without_one():
    assert bench_all.last_json('{"a": 1}\n{"a": 2}\n') == {"a": 2}
    assert bench_all.last_json("Traceback (most recent call last):\n  {broken\nValueError: x\n") is None


def test_it_records_a_failing_benchmark_and_goes_on(tmp_path):
    failing = bench_all.Benchmark("boom", ["-c", "import sys; print('half'); sys.exit('it broke')"], 60)
    working = bench_all.Benchmark("fine", ["-c", "print('{\"ratio\": 2.0}')"], 60)
    run = bench_all.run_all([failing, working], {}, None, "a test", tmp_path / "run.json")
    assert run["benchmarks"]["boom"]["status"] == "exit 1"
    assert "it broke" in run["benchmarks"]["boom"]["error"]
    assert run["benchmarks"]["fine"] == {**run["benchmarks"]["fine"], "status": "ok", "result": {"ratio": 2.0}}
    assert json.loads((tmp_path / "run.json").read_text())["benchmarks"].keys() == {"boom", "fine"}
    assert run["under_load"] and run["load_note"] == "a test"


def test_it_stops_a_benchmark_at_its_time_limit(tmp_path):
    slow = bench_all.Benchmark("slow", ["-c", "import time; print('{}', flush=True); time.sleep(30)"], 1)
    run = bench_all.run_all([slow], {}, None, None, tmp_path / "run.json")
    assert run["benchmarks"]["slow"]["status"] == "timeout after 1 s"


def test_it_ends_what_a_timed_out_benchmark_started(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    run = bench_all.run_all([bench_all.Benchmark("nodes", ["-c", code], 6)], {}, None, None, tmp_path / "run.json")
    assert run["benchmarks"]["nodes"]["status"] == "timeout after 6 s"
    child = int(pid_file.read_text())  # 6 s: time enough to start both on a loaded machine
    for _ in range(50):  # SIGKILL is sent; the kernel may take a moment to reap the orphan
        if not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {child}, started by the timed-out benchmark, is still running")


def test_it_keeps_the_saved_run_when_rerunning_some(tmp_path):
    first = bench_all.Benchmark("first", ["-c", "print('[1]')"], 60)
    again = bench_all.Benchmark("again", ["-c", "print('[2]')"], 60)
    run = bench_all.run_all([first, again], {}, None, None, tmp_path / "run.json")
    rerun = bench_all.run_all([again], {}, run, "rerun under load", tmp_path / "run.json")
    assert rerun["date"] == run["date"] and rerun["machine"] == run["machine"]
    assert rerun["benchmarks"]["first"] == run["benchmarks"]["first"]
    assert [r["benchmarks"] for r in rerun["reruns"]] == [["again"]] and rerun["under_load"]
