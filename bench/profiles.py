"""Where the time goes: sampling profiles of the workloads behind issue #24's goals (``make bench-profile``).

Runs each workload under ``py-spy record --subprocesses`` (every Python process it starts, nodes, portal and
gateway included, sampled 100 times a second without pausing them) and sums the samples by process role (client,
node, portal, gateway, ...) and by what the sampled code was doing (the innermost Python frame's package:
ONNX Runtime's ``run``, PyTorch, msgpack, asyncio, Django, psycopg, one of our modules, ...). A native call is
counted in the Python frame that made it: ONNX Runtime's arithmetic shows as ``onnxruntime``, a numpy copy as the
line of ours that asked for it. Idle threads (blocked in ``epoll``, a lock, ``sleep``) are not sampled, so a
role's samples divided by the rate are the seconds its Python threads were busy.

Targets (each a shortened form of the benchmark whose goal it explains; the profiler slows what it watches, so
read shares, never speeds):

- ``one_stream`` (goal 1): one generation through 3 ONNX nodes.
- ``sessions`` (goal 2): 8 concurrent sessions through 3 ONNX nodes.
- ``chat`` (goal 3): 20 browser chats at once through daphne and the gateway.
- ``failover_torch`` (goal 4): PyTorch nodes killed mid-generation, replayed.
- ``heartbeats`` (goal 5): 1,000 simulated nodes heartbeating a multi-process portal (PostgreSQL + Redis).

Usage: ``python bench/profiles.py [--targets sessions,chat] [--raw-dir DIR] --json``; ``make bench-all`` runs it
as its ``profiles`` benchmark and the report shows the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RATE = 100  # samples per second and thread
SERVICES = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/layerswarm",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


@dataclass(frozen=True)
class Target:
    """A workload to profile: the goal it explains and its command (after the Python interpreter)."""

    goal: str
    what: str
    args: list[str]
    timeout_s: int
    window: str  # a frame on the benchmark's stack (``py-spy dump``'s ``func (file:line)``) while it measures
    services: bool = False
    env: dict = field(default_factory=dict)


SWARM = ["-m", "swarmnode", "bench", "--model", "smollm2", "--nodes", "3", "--json", "--runs", "1"]
TARGETS = {
    "one_stream": Target(
        "1",
        "one stream, 3 ONNX nodes, 128 tokens",
        [*SWARM, "--backend", "onnxruntime", "--new-tokens", "128"],
        300,
        window=r"run_swarm \(.*swarm\.py",
    ),
    "sessions": Target(
        "2",
        "8 concurrent sessions, 3 ONNX nodes",
        [*SWARM, "--new-tokens", "64", "--sessions", "8"],
        420,
        window=r"worker \(.*bench/sessions\.py",
    ),
    "chat": Target(
        "3",
        "20 browser chats at once, in-memory channel layer",
        ["bench/chat_concurrency.py", "--sessions", "20", "--no-solo", "--no-direct"],
        480,
        window=r"run \(.*asyncio/runners\.py",
    ),
    "failover_torch": Target(
        "4",
        "3 generations with a PyTorch node killed in each",
        ["-m", "swarmnode", "bench-failover", "--kills", "3", "--json", "--backend", "torch"],
        420,
        window=r"stream \(.*client/model\.py",
    ),
    "heartbeats": Target(
        "5",
        "1,000 nodes offering 300 heartbeats/s to write-behind gunicorn × 2",
        [
            "bench/portal_heartbeats.py",
            *("--nodes", "1000", "--loads", "300", "--before", "none", "--duration", "20"),
        ],
        480,
        window=r"locust_point \(.*portal_heartbeats\.py",
        services=True,
    ),
}

# Process roles, from the innermost process's command line: the first pattern found names it.
ROLES = [
    ("locust", re.compile(r"locust")),
    ("celery", re.compile(r"celery")),
    ("gateway", re.compile(r"run_gateway")),
    ("portal (gunicorn)", re.compile(r"gunicorn")),
    ("portal (daphne)", re.compile(r"daphne|runserver|run_portal|portal\.asgi")),
    ("write-behind flusher", re.compile(r"flush")),
    ("node", re.compile(r"swarmnode (serve|node)|-m swarmnode\.server|swarmnode/server|--blocks")),
]

# What the innermost frame was doing, from its file: the first pattern found names it.
CATEGORIES = [
    ("ONNX Runtime (arithmetic)", re.compile(r"/onnxruntime/")),
    ("PyTorch / transformers (arithmetic)", re.compile(r"/(torch|transformers)/")),
    ("tokenizer", re.compile(r"/tokenizers/")),
    ("msgpack", re.compile(r"/msgpack/")),
    ("numpy", re.compile(r"/numpy/")),
    ("websockets", re.compile(r"/websockets/")),
    ("asyncio / sockets", re.compile(r"/(asyncio|selectors|socket|ssl|uvloop)[/.]")),
    ("threads / queues", re.compile(r"/(threading|queue|concurrent/futures)[/.]")),
    ("Channels / daphne / Twisted", re.compile(r"/(channels|channels_redis|daphne|twisted|autobahn)/")),
    ("Django / DRF", re.compile(r"/(django|rest_framework|drf_spectacular)/")),
    ("PostgreSQL client (psycopg)", re.compile(r"/psycopg")),
    ("Redis client", re.compile(r"/redis/")),
    ("gunicorn", re.compile(r"/gunicorn/")),
    ("locust / gevent", re.compile(r"/(locust|gevent|geventhttpclient)/")),
    ("prometheus_client", re.compile(r"/prometheus_client/")),
    ("JSON", re.compile(r"/json/")),
    ("logging", re.compile(r"/logging/")),
]
OURS = re.compile(r"/(swarmnode|portal|bench)/(.+)\.py$")


@dataclass
class Sample:
    """One line of py-spy's raw output: the process chain, the Python frames (outermost first), the count."""

    processes: list[tuple[int, str]]
    frames: list[str]
    count: int


_PROCESS = re.compile(r'process (\d+):"')
_CLOSE = re.compile(r'"(?=;|\s\d+\n)')


def parse_raw(text: str) -> list[Sample]:
    """py-spy's ``--format raw`` output (folded stacks) as samples.

    Each line is ``frame;frame;... count``; with ``--subprocesses`` the first frames are the process chain,
    ``process PID:"command line"``, whose command line may itself hold ``;`` and newlines.
    """
    samples: list[Sample] = []
    at, n = 0, len(text)
    while at < n:
        processes = []
        while True:
            m = _PROCESS.match(text, at)
            if not m:
                break
            close = _CLOSE.search(text, m.end())
            if close is None:
                return samples  # truncated
            processes.append((int(m.group(1)), text[m.end() : close.start()]))
            at = close.end()
            if text.startswith(";", at):
                at += 1
            else:
                break
        end = text.find("\n", at)
        end = n if end < 0 else end
        line, at = text[at:end], end + 1
        rest, _, count = line.rpartition(" ")
        if count.isdigit():
            samples.append(Sample(processes, [f for f in rest.split(";") if f], int(count)))
    return samples


def role_of(processes: list[tuple[int, str]]) -> str:
    """The role of the innermost process: node, portal, gateway, ... or ``client`` (the benchmark itself)."""
    if not processes:
        return "client"
    command = " ".join(processes[-1][1].split())
    for role, pattern in ROLES:
        if pattern.search(command):
            return role
    return "client" if len(processes) == 1 else "other"


def _file(frame: str) -> str:
    m = re.search(r"\(([^()]*)\)$", frame)
    return m.group(1) if m else ""


def category_of(frame: str) -> str:
    """What the innermost frame ``func (path)`` was doing: a library's name, or our module's dotted path."""
    path = _file(frame)
    for name, pattern in CATEGORIES:
        if pattern.search(path):
            return name
    m = OURS.search(path)
    if m:
        return f"{m.group(1)}.{m.group(2).replace('/', '.')}"
    return "other Python"


def short(frame: str) -> str:
    """``func (…/package/module.py)`` with the path cut to its package part."""
    path = _file(frame)
    ours = re.search(r"/((?:swarmnode|portal|bench)/.+)$", path)
    lib = re.search(r"(?:site-packages|lib/python3\.\d+)/(.+)$", path)
    cut = ours.group(1) if ours else lib.group(1) if lib else path.rsplit("/", 2)[-1]
    return frame[: frame.rfind("(")].strip() + f" ({cut})"


def _in_swarm_client(frames: list[str]) -> bool:
    return any("/swarmnode/client/" in _file(f) for f in frames)


def summarize(samples: list[Sample], seconds: float, rate: int = RATE, top: int = 8) -> dict:
    """Busy time by role, then by category and by innermost frame (shares of the role's busy time, in %).

    The benchmark's own process (``client``) is split into the swarm client's work (stacks through
    ``swarmnode/client``) and the rest (local reference models, set-up): the reference is not the swarm's cost.
    """
    by_role: dict[str, Counter] = {}
    leaves: dict[str, Counter] = {}
    pids: dict[str, set] = {}
    for s in samples:
        role = role_of(s.processes)
        if role == "client":
            role = "client (swarm)" if _in_swarm_client(s.frames) else "client (reference, set-up)"
        leaf = s.frames[-1] if s.frames else "(no Python frame)"
        by_role.setdefault(role, Counter())[category_of(leaf)] += s.count
        leaves.setdefault(role, Counter())[short(leaf)] += s.count
        pids.setdefault(role, set()).add(s.processes[-1][0] if s.processes else 0)
    total = sum(sum(c.values()) for c in by_role.values()) or 1
    roles = []
    for role, cats in sorted(by_role.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(cats.values())
        roles.append(
            {
                "role": role,
                "processes": len(pids[role]),
                "busy_s": round(n / rate, 1),
                "busy_cores": round(n / rate / seconds, 2) if seconds else None,
                "share_pct": round(100 * n / total, 1),
                "categories": [[c, round(100 * k / n, 1)] for c, k in cats.most_common(top)],
                "frames": [[f, round(100 * k / n, 1)] for f, k in leaves[role].most_common(top)],
            }
        )
    return {"seconds": round(seconds, 1), "busy_s": round(total / rate, 1), "roles": roles}


def py_spy() -> str:
    """The py-spy executable beside this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy not found: pip install -r requirements/dev.txt")
    return found


class _Recorder:
    """``py-spy record`` attached to a running process tree while a stretch of interest lasts."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.started = time.perf_counter()
        cmd = [
            *(py_spy(), "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--full-filenames"),
            *("--nolineno", "--rate", str(RATE), "--format", "raw", "--output", str(out)),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> float:
        """Stop sampling (py-spy writes its file on SIGINT); return the seconds sampled."""
        seconds = time.perf_counter() - self.started
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return seconds


def _stack_dump(pid: int) -> str:
    """Every thread's stack in process ``pid`` (idle ones too), without pausing it; empty if it is gone."""
    try:
        done = subprocess.run(
            [py_spy(), "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def profile(name: str, target: Target, raw_dir: Path, poll_s: float = 0.5) -> dict:
    """Run ``target`` and sample it (with every process it started) while ``target.window`` is on a stack of
    its main process; return the summary of those stretches, or the error.

    The stretches are found by polling the benchmark's stacks (``py-spy dump`` every ``poll_s``): one starts
    when the window frame appears and ends after two polls without it, so set-up (starting nodes, building
    ONNX graphs) and reference runs stay out. py-spy's folded stacks stay in ``raw_dir``, one file per
    stretch (https://www.speedscope.app or ``flamegraph.pl`` draws them).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(target.env)
    if target.services:
        env.update({k: os.environ.get(f"PROFILE_{k}", v) for k, v in SERVICES.items()})
    record = {"goal": target.goal, "what": target.what, "command": " ".join(["python", *target.args])}
    marker = re.compile(target.window, re.M)
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            [sys.executable, *target.args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )
        stretches: list[tuple[Path, float]] = []
        recorder, misses = None, 0
        deadline = time.monotonic() + target.timeout_s
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                inside = bool(marker.search(_stack_dump(proc.pid)))
                if inside and recorder is None:
                    recorder = _Recorder(proc.pid, raw_dir / f"{name}-{len(stretches) + 1}.txt")
                misses = 0 if inside else misses + 1
                if recorder is not None and misses >= 2:
                    stretches.append((recorder.out, recorder.stop()))
                    recorder = None
                time.sleep(poll_s)
        finally:
            if recorder is not None:
                stretches.append((recorder.out, recorder.stop()))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            errors.seek(0)
            stderr = errors.read()
    samples = [s for path, _ in stretches if path.exists() for s in parse_raw(path.read_text(errors="replace"))]
    if not samples:
        record["error"] = f"no sample while {target.window!r} was on the benchmark's stack: " + (
            stderr.strip()[-1500:] or f"exit {proc.returncode}"
        )
        return record
    record.update(summarize(samples, sum(seconds for _, seconds in stretches)))
    record["stretches"] = len(stretches)
    if proc.returncode != 0:
        record["warning"] = f"the benchmark exited {proc.returncode}: {stderr.strip().splitlines()[-1:]}"
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--raw-dir", type=Path, help="keep py-spy's folded stacks here (default: a temporary dir)")
    parser.add_argument("--json", action="store_true", help="print the summaries as one line of JSON")
    args = parser.parse_args()
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="layerswarm-profile-") as tmp:
        raw_dir = args.raw_dir or Path(tmp)
        raw_dir.mkdir(parents=True, exist_ok=True)
        results = {}
        for name in names:
            print(f"profiling {name}: {TARGETS[name].what}", file=sys.stderr, flush=True)
            results[name] = profile(name, TARGETS[name], raw_dir)
            if not args.json:
                print(json.dumps(results[name], indent=1))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
