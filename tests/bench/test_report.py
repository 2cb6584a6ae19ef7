"""bench/report.py on a real saved ``make bench-all`` run (tests/bench/fixtures/bench-all-run.json, measured
under load on a 2-core machine): the goal table, the generated sections, the plots, and runs with gaps."""

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import report  # noqa: E402 - bench/report.py, a script's module

RUN = json.loads((Path(__file__).parent / "fixtures" / "bench-all-run.json").read_text())


@pytest.fixture
def root(tmp_path):
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "benchmarks.md", tmp_path / "docs" / "benchmarks.md")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def _hand_written(text: str) -> str:
    start, end = text.find(report.BEGIN), text.find(report.END)
    return text if start < 0 else text[:start] + text[end + len(report.END) :]


def test_it_writes_one_row_per_goal_with_the_measured_figures():
    rows = report.goal_rows(RUN)
    assert len(rows) == len(report.GOALS) + 1  # and the exactness row
    by_what = {r["what"]: r for r in rows}
    fo = RUN["benchmarks"]["failover"]["result"]
    assert by_what["median stall per killed node"]["measured"] == f"{fo['stall']['median_s']:.3g} s"
    assert by_what["median stall per killed node"]["met"] == (fo["stall"]["median_s"] <= 0.5)
    onnx = RUN["benchmarks"]["swarm_onnx"]["result"]["ratio"]
    assert by_what["3-node swarm vs local whole-model ONNX Runtime"]["measured"] == f"{onnx:.3g}×"
    assert by_what["median stall per killed node"]["before"] == "2.24 s"  # issue #24's baseline


def test_it_replaces_only_the_generated_sections_and_draws_the_plots(root):
    before_doc = (root / "docs" / "benchmarks.md").read_text()
    before_readme = (root / "README.md").read_text()
    written = report.render(RUN, root)
    doc, readme = (root / "docs" / "benchmarks.md").read_text(), (root / "README.md").read_text()
    assert doc.count(report.BEGIN) == 1 and readme.count(report.BEGIN) == 1
    assert _hand_written(doc).split() == _hand_written(before_doc).split()  # the history is untouched
    assert _hand_written(readme).split() == _hand_written(before_readme).split()
    assert RUN["commit"][:12] in doc and "under load" in doc and "under load" in readme
    images = [p for p in written if p.suffix == ".png"]
    assert {p.name for p in images} == {"bench-sessions.png", "bench-failover.png", "bench-heartbeats.png"}
    for p in images:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"img/{p.name}" in doc
    report.render(RUN, root)  # a second render changes nothing
    assert (root / "docs" / "benchmarks.md").read_text() == doc


def test_it_says_not_measured_for_a_failed_benchmark_and_still_renders(root):
    run = copy.deepcopy(RUN)
    run["benchmarks"]["failover"] = {"command": "x", "status": "exit 1", "seconds": 3.0, "result": None,
                                     "error": "Traceback ...\nRuntimeError: node did not become ready"}  # fmt: skip
    del run["benchmarks"]["heartbeats"]
    run["benchmarks"]["sessions"]["result"] = [{"sessions": 8}]  # a report missing its fields
    rows = {r["what"]: r for r in report.goal_rows(run)}
    assert rows["median stall per killed node"]["measured"] == report.NOT_MEASURED
    assert rows["portal CPU per heartbeat"]["measured"] == report.NOT_MEASURED
    assert rows["8 sessions vs 1, aggregate tok/s"]["measured"] == report.NOT_MEASURED
    report.render(run, root)
    doc = (root / "docs" / "benchmarks.md").read_text()
    assert "RuntimeError: node did not become ready" in doc and "bench-failover.png" not in doc


def test_it_reads_the_tracker_figures_of_either_benchmark_version():
    old = {"runs": [{"daphne_processes": 1, "saturation": {"requests_per_s": 55.0, "p99_ms": 80.0,
            "daphne_cpu_ms_per_request": 12.6, "postgres_cpu_ms_per_request": 2.6}, "realistic": {}}]}  # fmt: skip
    assert report.heartbeat_figures(old) == {"cpu_ms": pytest.approx(15.2), "per_s": 55.0, "p99_ms": 80.0}
    new = {"cpu_ms_per_heartbeat": 1.2, "heartbeats_per_s": 1100.0, "p99_ms": 40.0}
    assert report.heartbeat_figures(new) == {"cpu_ms": 1.2, "per_s": 1100.0, "p99_ms": 40.0}
    assert report.heartbeat_figures(None) == {"cpu_ms": None, "per_s": None, "p99_ms": None}


def test_it_draws_one_latency_curve_per_tracker_setup():
    hb = RUN["benchmarks"]["heartbeats"]["result"]
    curves = report.latency_curves(hb)
    assert len(curves) == len(hb["runs"])
    for run_report, points in zip(hb["runs"], curves.values(), strict=True):
        assert len(points) == len(run_report["load_curve"])
        assert points == sorted(points)  # drawn from the lowest rate up
    assert len(report.load_curve_rows(hb)) == sum(len(r["load_curve"]) for r in hb["runs"])
    old = {"runs": [{"daphne_processes": 1, "saturation": {"requests_per_s": 55.0, "p99_ms": 80.0},
            "realistic": {"requests_per_s": 10.0, "p99_ms": 9.0}}]}  # fmt: skip
    assert report.latency_curves(old) == {"daphne × 1": [(10.0, 9.0), (55.0, 80.0)]}


def test_the_pytorch_failover_run_has_rows_of_its_own_and_counts_for_exactness(root):
    run = copy.deepcopy(RUN)
    torch_run = copy.deepcopy(run["benchmarks"]["failover"])
    torch_run["result"].update(backend="torch", node_backends=["torch"], stall={"median_s": 0.42, "max_s": 1.9})
    run["benchmarks"]["failover_torch"] = torch_run
    rows = {r["what"]: r for r in report.goal_rows(run)}
    median = rows["median stall per killed node, PyTorch nodes (the baseline's kind)"]
    assert (median["measured"], median["met"]) == ("0.42 s", True)
    assert rows["max stall per killed node, PyTorch nodes"]["met"] is False
    assert report.tokens_equal_everywhere(run) == report.tokens_equal_everywhere(RUN)
    torch_run["result"]["tokens_equal"] = False
    assert report.tokens_equal_everywhere(run) is False
    report.render(run, root)
    assert "| torch | " in (root / "docs" / "benchmarks.md").read_text()


def test_it_says_how_much_of_the_failover_stalls_the_replay_takes():
    fo = {"events": [{"stall_s": [1.0], "replay_s": [0.9], "replay_tokens": [90]},
                     {"stall_s": [0.5, 0.5], "replay_s": [0.3, 0.3], "replay_tokens": [30, 30]}]}  # fmt: skip
    assert report.replay_share(fo) == "75%, 10.0 ms"
    assert report.replay_share({"events": []}) is None
    assert report.replay_share(None) is None
