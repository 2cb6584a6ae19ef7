"""``make bench-all``: every benchmark of issue #24's goals in one go, then one report.

Runs the benchmarks one after the other (never two at once: they would measure each other), each in
its own process with a time limit, and captures the JSON each prints. A benchmark that fails or
times out is recorded with its error and the run goes on. The run is saved after every benchmark
to ``docs/bench/latest.json`` (with the machine, the load average before and after, the commit and
the date), then ``bench/report.py`` writes the generated section of ``docs/benchmarks.md``, the
README's summary table and the plots in ``docs/img/``.

Usage: ``python bench/all.py`` (``make bench-all``); ``--only failover,int8`` runs some of them (the
others keep their saved results); ``--render-only`` redraws the report from the saved JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402 - bench/report.py, beside this script

LATEST = ROOT / "docs" / "bench" / "latest.json"
QUIET_LOAD_PER_CORE = 0.25  # a 1-minute load average above this share of the cores: "under load"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark process: what it runs, how long it may take, whether it needs PostgreSQL + Redis."""

    name: str
    args: list[str]  # after the Python interpreter, or a full command when ``make`` is set
    timeout_s: int
    services: bool = False  # DATABASE_URL / REDIS_URL point at the machine's PostgreSQL and Redis
    make: bool = False  # args is a make target (its recipe sets its own environment)
    env: dict = field(default_factory=dict)


SWARM = ["-m", "swarmnode", "bench", "--model", "smollm2", "--nodes", "3", "--new-tokens", "64", "--json"]
FAILOVER = ["-m", "swarmnode", "bench-failover", "--kills", "10", "--json"]
# Time limits: about 2.5x what each took on a loaded 2-core machine (2026-12-03: 79-264 s each, 37 min in all).
BENCHMARKS = [
    Benchmark("swarm_default", SWARM, 420),
    Benchmark("swarm_onnx", [*SWARM, "--backend", "onnxruntime"], 300),
    Benchmark("sessions", [*SWARM, "--sessions", "1,8,16"], 600),
    # Push mode (nodes forward activations themselves): beside the default chain mode, to decide the default.
    Benchmark("swarm_onnx_push", [*SWARM, "--backend", "onnxruntime", "--push"], 300),
    Benchmark("sessions_push", [*SWARM, "--sessions", "1,8,16", "--push"], 600),
    Benchmark("chat_memory", ["bench/chat_concurrency.py", "--sessions", "20"], 600),
    Benchmark("chat_redis", ["bench/chat_concurrency.py", "--sessions", "20"], 600, services=True),
    Benchmark("failover", FAILOVER, 660),
    # The failover baseline came from PyTorch nodes: the same kills on them, like for like.
    Benchmark("failover_torch", [*FAILOVER, "--backend", "torch"], 660),
    Benchmark("heartbeats", ["bench-portal"], 600, make=True),
    Benchmark("torch", [*SWARM, "--backend", "torch"], 400),
    Benchmark("torch_sessions", [*SWARM, "--backend", "torch", "--sessions", "1,8", "--runs", "2"], 600),
    Benchmark("int8", [*SWARM, "--dtype", "int8"], 400),
    Benchmark("backends", ["-m", "swarmnode", "bench-backends", "--model", "smollm2", "--json"], 660),
    # Where the time goes for each goal's workload (py-spy); last, so that sampling never slows a measurement.
    Benchmark("profiles", ["bench/profiles.py", "--json"], 2400),
]


def last_json(text: str):
    """The last top-level JSON object or array printed in ``text`` (one line or indented over many), or None.

    Scans forward: a value that parses is skipped whole, so the objects nested in an indented report
    never count as reports of their own.
    """
    decoder = json.JSONDecoder()
    found, at = None, 0
    while at < len(text):
        end = text.find("\n", at)
        end = len(text) if end < 0 else end + 1
        start = at + len(text[at:end]) - len(text[at:end].lstrip())
        if text[start : start + 1] in ("{", "["):
            try:
                value, stop = decoder.raw_decode(text, start)
            except ValueError:
                value = None
            if isinstance(value, dict | list):
                found, end = value, max(end, stop)
        at = end
    return found


def machine() -> dict:
    """The CPU model, core count, RAM and GPU (``nvidia-smi -L``'s first line, or none) of this machine."""
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except (OSError, subprocess.SubprocessError):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = "none"
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
        gpu = listed.splitlines()[0] if listed else gpu
    except (OSError, subprocess.SubprocessError):
        pass
    return {"model_name": model, "cores": os.cpu_count(), "ram_gib": round(ram, 1), "gpu": gpu}


def commit() -> str:
    """The measured commit (with ``+dirty`` when tracked files differ from it)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    return (head or "unknown") + ("+dirty" if dirty else "")


def run_one(bench: Benchmark, services: dict[str, str]) -> dict:
    """Run ``bench`` to completion or its time limit; return its record (status, seconds, result, error)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(bench.env)
    if bench.services:
        env.update(services)
    cmd = ["make", "--no-print-directory", "-s", *bench.args] if bench.make else [sys.executable, *bench.args]
    shown = " ".join(["make", *bench.args] if bench.make else ["python", *bench.args])
    record = {"command": shown, "status": "failed", "seconds": None, "result": None, "error": None}
    started = time.perf_counter()
    stdout, stderr, code = _run_group(cmd, env, bench.timeout_s)
    record["status"] = f"timeout after {bench.timeout_s} s" if code is None else ("ok" if code == 0 else f"exit {code}")
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["result"] = last_json(stdout)
    if record["status"] != "ok" or record["result"] is None:
        record["error"] = (stderr or stdout or "no output")[-2000:]
        if record["status"] == "ok":
            record["status"] = "no JSON in its output"
    return record


def _run_group(cmd: list[str], env: dict, timeout_s: int) -> tuple[str, str, int | None]:
    """Run ``cmd`` in a process group of its own; at ``timeout_s`` end the whole group (the node processes a
    benchmark started too, not only the benchmark). Returns stdout, stderr and the exit code (None: timed out)."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
        return stdout, stderr, proc.returncode
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                stdout, stderr = proc.communicate(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            stdout, stderr = proc.communicate()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever outlived the benchmark's own exit
        except ProcessLookupError:
            pass
        return stdout or "", stderr or "", None
    except BaseException:  # Ctrl-C: the benchmark's own session would not get it
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def run_all(
    selected: list[Benchmark], services: dict[str, str], previous: dict | None, note: str | None, path: Path
) -> dict:
    """Run ``selected`` one after the other, saving the run to ``path`` after each.

    With ``previous`` (a partial rerun, ``--only``), the other benchmarks keep their saved results and the
    run keeps its date, commit and load figures; the rerun is listed under ``reruns`` with its own.
    """
    now = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "load_before": load_average(),
    }
    cores = os.cpu_count() or 1
    under_load = bool(note) or now["load_before"][0] > QUIET_LOAD_PER_CORE * cores
    now["under_load"] = under_load
    now["load_note"] = note or (f"1-minute load average {now['load_before'][0]} at the start" if under_load else None)
    if previous:
        run = {**previous, "benchmarks": dict(previous.get("benchmarks", {}))}
        rerun = {**now, "benchmarks": [b.name for b in selected]}
        run["reruns"] = [*previous.get("reruns", []), rerun]
        run["under_load"] = bool(previous.get("under_load")) or under_load
        run["load_note"] = previous.get("load_note") or now["load_note"]
    else:
        run = {**now, "machine": machine(), "benchmarks": {}}
        rerun = run
    began = time.perf_counter()
    for i, bench in enumerate(selected, 1):
        print(f"[{i}/{len(selected)}] {bench.name}: {' '.join(bench.args)} (limit {bench.timeout_s} s)", flush=True)
        record = run_one(bench, services)
        run["benchmarks"][bench.name] = record
        tail = "" if record["status"] == "ok" else f": {(record['error'] or '').strip().splitlines()[-1:]}"
        print(f"    {record['status']} in {record['seconds']} s{tail}", flush=True)
        rerun["load_after"] = load_average()
        rerun["wall_s"] = round(time.perf_counter() - began, 1)
        save(run, path)
    return run


def save(run: dict, path: Path = LATEST) -> None:
    """Write ``run`` as indented JSON to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated benchmark names (default: all): " + ", ".join(
        b.name for b in BENCHMARKS))  # fmt: skip
    parser.add_argument("--render-only", action="store_true", help="redraw the report from the saved run")
    parser.add_argument("--json", type=Path, default=LATEST, help="the saved run (read and written)")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/layerswarm", help="PostgreSQL URL")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    parser.add_argument("--note", help="say the machine was loaded, and by what (printed in the report)")
    args = parser.parse_args()

    previous = json.loads(args.json.read_text()) if args.json.exists() else None
    if args.render_only:
        if previous is None:
            raise SystemExit(f"no saved run at {args.json}")
        run = previous
    else:
        names = args.only.split(",") if args.only else [b.name for b in BENCHMARKS]
        unknown = set(names) - {b.name for b in BENCHMARKS}
        if unknown:
            raise SystemExit(f"unknown benchmarks: {', '.join(sorted(unknown))}")
        selected = [b for b in BENCHMARKS if b.name in names]
        services = {"DATABASE_URL": args.pg, "REDIS_URL": args.redis}
        run = run_all(selected, services, previous if args.only else None, args.note, args.json)
    written = report.render(run, ROOT)
    for row in report.goal_rows(run):
        print(f"{row['goal']:<16} {row['what'][:60]:<60} {row['measured'][:40]:<40} {report.verdict(row)}")
    print("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in [args.json, *written]))


if __name__ == "__main__":
    main()
