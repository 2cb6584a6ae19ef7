"""Load benchmark of the tracker: N simulated nodes heartbeating, driven by Locust, against PostgreSQL + Redis.

Starts a real portal on a scratch database, creates N node tokens and registers N nodes over HTTP, then runs
``bench/locust_heartbeats.py`` (one Locust user per node, a fixed interval each) at several offered loads,
twice in one run:

- ``before`` (``--before write-behind``, the default): gunicorn's WSGI workers (``portal/wsgi.py``, deploy/) with
  write-behind heartbeats (``portal/swarm/beats.py``) but every heartbeat through Django (DRF, the token's SQL
  lookup, then one Redis call: ``SWARM_HEARTBEAT_FAST_PATH=0``); ``--before direct``: the same workers writing
  every heartbeat to PostgreSQL (``SWARM_HEARTBEAT_WRITE_BEHIND=0``), as until #24 goal 5; ``--before daphne``:
  HTTP served by daphne processes instead (how the portal served heartbeats before that);
- ``after``: the same gunicorn workers with write-behind heartbeats and the fast path in front of Django
  (``portal/swarm/fastbeat.py``): a vouched online node's heartbeat is one Redis call, and a flusher process
  (standing in for the Celery beat task, every ``SWARM_HEARTBEAT_FLUSH_EVERY`` s) writes them in batches. Its
  CPU counts as the portal's.

Each point of ``load_curve`` gives the achieved heartbeats/s, latency percentiles and the CPU the portal's
own processes spent per heartbeat (``/proc``, over the same window as the latencies); PostgreSQL's, Redis'
and Locust's CPU per heartbeat are reported apart (Locust shares this machine's cores).

Usage: ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/layerswarm REDIS_URL=redis://127.0.0.1:6379/0
python bench/portal_heartbeats.py`` (``make bench-portal``). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portal.processes import PortalProcesses, local_env, manage, scratch_database  # noqa: E402


class Connection:
    """One keep-alive HTTP/1.1 connection (a tiny client: the load generator must stay cheap)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, token: str, body: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        await self.writer.drain()
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


def cpu_seconds(pids: list[int] | None = None, comm: str | None = None) -> float:
    """CPU time (user + system, all threads) of ``pids``, or of every process named ``comm``."""
    tick = os.sysconf("SC_CLK_TCK")
    if pids is None:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm is not None and name != comm:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


async def register_all(port: int, tokens: list[str], concurrency: int) -> list[tuple[str, int]]:
    queue = list(enumerate(tokens))
    nodes: list[tuple[str, int]] = []

    async def worker():
        conn = Connection("127.0.0.1", port)
        while queue:
            i, token = queue.pop()
            start = random.randrange(0, 29)
            body = {
                "model": "smollm2",
                "start_block": start,
                "end_block": random.randrange(start + 1, 31),
                # A host name, as a node on the internet may announce: the tracker refuses private addresses
                # (#17 finding 12) and never resolves or dials a name, so no node needs to exist there.
                "url": f"ws://node{i}.bench.invalid:31337/layerswarm/v1",
                "backend": "torch",
                "device": "cuda:0",
                "dtype": "float16",
                "throughput": random.uniform(5, 500),
                "cache_tokens_left": 32768,
                "version": "0.1.0",
            }
            status, payload = await conn.post("/api/v1/nodes/register/", token, body)
            if status != 201:
                raise RuntimeError(f"registration failed: {status} {payload[:200]!r}")
            nodes.append((token, json.loads(payload)["id"]))
        conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return nodes


def create_tokens(env: dict[str, str], count: int) -> list[str]:
    code = "\n".join(
        [
            "import json",
            "from django.contrib.auth.models import User",
            "from portal.accounts.models import NodeToken",
            f"users = [User.objects.create_user(f'volunteer{{u}}') for u in range(max(1, {count} // 10))]",
            f"tokens = [NodeToken.create_for(users[i % len(users)], f'gpu {{i}}')[1] for i in range({count})]",
            "print(json.dumps(tokens))",
        ]
    )
    return json.loads(manage(["shell", "-c", code], env).stdout.strip().splitlines()[-1])


def group_pids(leaders: list[int]) -> list[int]:
    """Every process in the process groups of ``leaders`` (gunicorn's master and its workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[2]) in leaders:  # process group = the one we spawned
            pids.append(int(entry))
    return pids


def locust_point(url: str, nodes_file: Path, nodes: int, offered: float, pids: list[int], args) -> dict:
    """One Locust run: ``nodes`` nodes heartbeating ``offered`` times a second in all, over ``args.connections``
    keep-alive connections (Locust users); its measured window."""
    interval = nodes / offered
    users = min(args.connections, nodes)
    result_file = nodes_file.with_name(f"result-{os.getpid()}-{offered:g}.json")
    result_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "HEARTBEAT_NODES": str(nodes_file),
        "HEARTBEAT_INTERVAL": str(interval),
        "HEARTBEAT_CONNECTIONS": str(users),
        "HEARTBEAT_WARMUP": str(interval + 1.0),
        "HEARTBEAT_PIDS": ",".join(map(str, pids)),
        "HEARTBEAT_RESULT": str(result_file),
    }
    run_time = int(interval + 1.0 + args.duration) + 1
    cmd = [sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locust_heartbeats.py"))]
    cmd += ["--headless", "--only-summary", "--loglevel", "WARNING", "-u", str(users), "-r", str(users)]
    cmd += ["-t", f"{run_time}s", "--stop-timeout", "0", "--host", url]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=run_time + 120)
    if not result_file.exists():
        raise RuntimeError(f"locust wrote no result (exit {done.returncode}):\n{done.stderr[-2000:]}")
    point = json.loads(result_file.read_text())
    return {"offered_per_s": offered, "interval_s": round(interval, 3), "connections": users, **point}


def served_by(metrics: Path, registrations: int) -> dict:
    """Heartbeats the fast path answered and those Django did (its POSTs less the registrations), over the whole
    run, from the portal's Prometheus files (``portal/processes.py`` gives each run a fresh folder)."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics))
    fast = registry.get_sample_value("layerswarm_fast_heartbeats_total") or 0.0
    posts = registry.get_sample_value("django_http_requests_total_by_method_total", {"method": "POST"}) or 0.0
    return {"fast_path": int(fast), "django": max(0, int(posts) - registrations)}


def cpu_per_heartbeat(curve: list[dict]) -> float | None:
    """The portal's CPU per heartbeat at the busiest point of a curve (the cost that sets capacity)."""
    served = [p for p in curve if p["achieved_per_s"] > 0]
    return max(served, key=lambda p: p["achieved_per_s"])["portal_cpu_ms_per_heartbeat"] if served else None


def best_rate(curve: list[dict], p99_limit_ms: float = 100.0) -> dict | None:
    """The point with the most heartbeats/s whose p99 stays under ``p99_limit_ms`` and nothing failed."""
    good = [p for p in curve if p["p99_ms"] < p99_limit_ms and not p["failures"]]
    return max(good, key=lambda p: p["achieved_per_s"]) if good else None


FLUSHER = """
import time
from portal.swarm import tracker
while True:
    tracker.flush_heartbeats()
    time.sleep({every})
"""


def run_server(
    args: argparse.Namespace, server: str, folder: Path, write_behind: bool = False, fast_path: bool = False
) -> dict:
    """Fresh database, the portal with HTTP on ``server`` (daphne or gunicorn), N registrations, the curve;
    ``write_behind``: heartbeats buffered in Redis, ``fast_path``: and answered in front of Django."""
    base = os.environ.get("DATABASE_URL", "") or "sqlite://"
    with scratch_database(base, "layerswarm_bench", folder) as db_url:
        env = {
            "DATABASE_URL": db_url,
            "LAYERSWARM_VAR_DIR": str(folder / "var"),
            # Production mode (no DEBUG query log); plain HTTP on loopback, as behind nginx.
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "bench-" + "x" * 50,
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "SWARM_HEARTBEAT_TIMEOUT": "3600",  # nothing expires mid-run
            "SWARM_MAX_NODES_PER_TOKEN": "8",
            "API_THROTTLE_USER": "1000000000/min",  # measure the tracker, not the per-user rate limit (#17)
            "SWARM_HEARTBEAT_WRITE_BEHIND": "1" if write_behind else "0",
            "SWARM_HEARTBEAT_FAST_PATH": "1" if fast_path else "0",
            "SWARM_HEARTBEAT_FLUSH_EVERY": str(args.flush_every),
        }
        gunicorn = server == "gunicorn"
        portal = PortalProcesses(
            env=env,
            celery=False,
            gateway=False,
            log_dir=folder / "logs" / server,
            workers=1 if gunicorn else args.processes,
            http_workers=args.processes if gunicorn else 0,
            access_log=False,
        )
        with portal:
            port = portal.http_port if gunicorn else portal.port
            tokens = create_tokens(env, args.nodes)
            t0 = time.perf_counter()
            nodes = asyncio.run(register_all(port, tokens, args.concurrency))
            register_s = time.perf_counter() - t0
            nodes_file = folder / f"nodes-{server}.json"
            nodes_file.write_text(json.dumps(nodes))
            # The HTTP servers (each started in a process group of its own): daphne, or gunicorn and its workers.
            leaders = [p.pid for p in portal.procs if p.args[2] == ("gunicorn" if gunicorn else "daphne")]
            flusher = None
            if write_behind:
                code = FLUSHER.format(every=args.flush_every)
                cmd = [sys.executable, str(Path(__file__).resolve().parent.parent / "manage.py"), "shell", "-c", code]
                log = open(folder / "logs" / server / "flusher.log", "ab")  # noqa: SIM115 - handed to the child
                flusher = subprocess.Popen(
                    cmd, env=local_env(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
                log.close()
                leaders.append(flusher.pid)
            pids = group_pids(leaders)
            loads = [float(x) for x in (args.before_loads if server == "daphne" else args.loads).split(",")]
            try:
                curve = [locust_point(portal.http_url, nodes_file, len(nodes), rate, pids, args) for rate in loads]
                served = served_by(Path(local_env(portal.env)["PROMETHEUS_MULTIPROC_DIR"]), len(nodes))
            finally:
                if flusher is not None:
                    flusher.terminate()
                    flusher.wait(10)
    best = best_rate(curve)
    return {
        "server": server + (" write-behind" if write_behind else "") + (" fast-path" if fast_path else ""),
        "write_behind": write_behind,
        "fast_path": fast_path,
        "processes": args.processes,
        "database": db_url.split("://")[0],
        "nodes": len(nodes),
        "register_per_s": round(len(nodes) / register_s, 1),
        "cpu_ms_per_heartbeat": cpu_per_heartbeat(curve),
        "served_by": served,
        "heartbeats_per_s": best["achieved_per_s"] if best else 0.0,
        "p99_ms": best["p99_ms"] if best else None,
        "load_curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes")
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections carrying them (Locust users; nginx's pool)"
    )
    parser.add_argument("--loads", default="100,300,1000", help="offered heartbeats/s, gunicorn")
    parser.add_argument(
        "--before",
        choices=["write-behind", "direct", "daphne", "none"],
        default="write-behind",
        help="the run to compare",
    )
    parser.add_argument("--before-loads", default="100,300", help="offered heartbeats/s, --before daphne")
    parser.add_argument("--flush-every", type=float, default=2.0, help="seconds between write-behind flushes")
    parser.add_argument("--processes", type=int, default=2, help="HTTP server processes (daphne or gunicorn)")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per offered load")
    parser.add_argument("--concurrency", type=int, default=32, help="connections registering the nodes")
    args = parser.parse_args()

    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        print("warning: DATABASE_URL is not PostgreSQL; measuring SQLite instead", file=sys.stderr)
    folder = Path(tempfile.mkdtemp(prefix="bench-portal-"))
    load_before = os.getloadavg()
    after = run_server(args, "gunicorn", folder, write_behind=True, fast_path=True)
    before = {
        "write-behind": lambda: run_server(args, "gunicorn", folder, write_behind=True),
        "direct": lambda: run_server(args, "gunicorn", folder),
        "daphne": lambda: run_server(args, "daphne", folder),
        "none": lambda: None,
    }[args.before]()
    result = {
        "cpu_cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average_before": [round(x, 2) for x in load_before],
        "redis": bool(os.environ.get("REDIS_URL")),
        # The goal's figures (#24 goal 5), from the fast-path run: portal CPU per heartbeat at its busiest
        # point, and the most heartbeats/s served with p99 < 100 ms and no failures.
        "cpu_ms_per_heartbeat": after["cpu_ms_per_heartbeat"],
        "heartbeats_per_s": after["heartbeats_per_s"],
        "p99_ms": after["p99_ms"],
        "max_achieved_per_s": max((p["achieved_per_s"] for p in after["load_curve"]), default=0.0),
        "load_curve": after["load_curve"],
        "before": before,
        "cpu_ratio_before_after": (
            round(before["cpu_ms_per_heartbeat"] / after["cpu_ms_per_heartbeat"], 2)
            if before and before["cpu_ms_per_heartbeat"] and after["cpu_ms_per_heartbeat"]
            else None
        ),
        "runs": [r for r in (before, after) if r],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))


def cpu_model() -> str:
    """This machine's CPU, as ``lscpu`` names it."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


if __name__ == "__main__":
    main()
