"""Load benchmark of the tracker: heartbeats of N simulated nodes against daphne + PostgreSQL.

Starts a real portal (daphne, no Celery) on a scratch database, creates N node tokens, registers N
nodes over HTTP, then measures heartbeats two ways in one run:

- saturation: ``--concurrency`` keep-alive connections send heartbeats back to back for ``--duration`` s
  (the most requests/s one daphne process sustains);
- realistic: every node heartbeats once per ``--interval`` s (N / interval requests/s offered), and we
  report the latency nodes see at that rate.

Usage: ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/layerswarm python bench/portal_heartbeats.py``
(``make bench-portal``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portal.processes import PortalProcesses, manage, scratch_database  # noqa: E402


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summary(latencies: list[float], errors: Counter, seconds: float) -> dict:
    ms = [v * 1000 for v in latencies]
    return {
        "requests": len(ms),
        "errors": sum(errors.values()),
        "error_statuses": dict(errors),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(ms) / seconds, 1),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


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


def beat_body() -> dict:
    return {"cache_tokens_left": random.randrange(0, 32768), "open_sessions": random.randrange(0, 8)}


async def saturation(port: int, nodes: list[tuple[str, int]], concurrency: int, duration: float) -> dict:
    latencies: list[float] = []
    errors: Counter = Counter()
    deadline = time.perf_counter() + duration

    async def worker(offset: int):
        conn = Connection("127.0.0.1", port)
        i = offset
        while time.perf_counter() < deadline:
            token, node_id = nodes[i % len(nodes)]
            i += concurrency
            started = time.perf_counter()
            status, _ = await conn.post(f"/api/v1/nodes/{node_id}/heartbeat/", token, beat_body())
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors[status] += 1
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return summary(latencies, errors, time.perf_counter() - started)


async def realistic(port: int, nodes: list[tuple[str, int]], interval: float, duration: float) -> dict:
    """Every node heartbeats every ``interval`` s, phases spread evenly (open loop: a slow portal
    does not slow the offered rate down)."""
    latencies: list[float] = []
    errors: Counter = Counter()
    pool: list[Connection] = []
    begin = time.perf_counter()

    async def node_loop(k: int, token: str, node_id: int):
        next_at = begin + interval * k / len(nodes)
        while next_at < begin + duration:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            conn = pool.pop() if pool else Connection("127.0.0.1", port)
            started = time.perf_counter()
            status, _ = await conn.post(f"/api/v1/nodes/{node_id}/heartbeat/", token, beat_body())
            latencies.append(time.perf_counter() - started)
            pool.append(conn)
            if status != 200:
                errors[status] += 1
            next_at += interval

    await asyncio.gather(*(node_loop(k, t, n) for k, (t, n) in enumerate(nodes)))
    result = summary(latencies, errors, time.perf_counter() - begin)
    result["offered_per_s"] = round(len(nodes) / interval, 1)
    result["connections"] = len(pool)
    for conn in pool:
        conn.close()
    return result


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


def run_one(args: argparse.Namespace, workers: int, folder: Path) -> dict:
    """Fresh database, ``workers`` daphne processes, N registrations, then both heartbeat phases."""
    base = os.environ.get("DATABASE_URL", "") or "sqlite://"
    with scratch_database(base, "layerswarm_bench", folder) as db_url:
        env = {
            "DATABASE_URL": db_url,
            "LAYERSWARM_VAR_DIR": str(folder / "var"),
            # Production mode (no DEBUG query log); plain HTTP on loopback, as behind nginx.
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "bench-" + "x" * 50,
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "SWARM_HEARTBEAT_INTERVAL": str(args.interval),
            "SWARM_HEARTBEAT_TIMEOUT": str(max(3600.0, 2 * args.interval)),  # nothing expires mid-run
            "SWARM_MAX_NODES_PER_TOKEN": "8",
            "API_THROTTLE_USER": "1000000000/min",  # measure the tracker, not the per-user rate limit (#17)
        }
        portal = PortalProcesses(env=env, celery=False, log_dir=folder / "logs", workers=workers, access_log=False)
        with portal:
            tokens = create_tokens(env, args.nodes)
            t0 = time.perf_counter()
            nodes = asyncio.run(register_all(portal.port, tokens, args.concurrency))
            register_s = time.perf_counter() - t0
            daphne_pids = [p.pid for p in portal.procs]
            cpu_before = (cpu_seconds(daphne_pids), cpu_seconds(comm="postgres"))
            sat = asyncio.run(saturation(portal.port, nodes, args.concurrency, args.duration))
            cpu_after = (cpu_seconds(daphne_pids), cpu_seconds(comm="postgres"))
            # CPU per heartbeat is what the machine's load does not change much: capacity ~ cores / cost.
            n = max(1, sat["requests"])
            sat["daphne_cpu_ms_per_request"] = round((cpu_after[0] - cpu_before[0]) * 1000 / n, 2)
            sat["postgres_cpu_ms_per_request"] = round((cpu_after[1] - cpu_before[1]) * 1000 / n, 2)
            real = asyncio.run(realistic(portal.port, nodes, args.interval, args.duration))
    return {
        "database": db_url.split("://")[0],
        "daphne_processes": workers,
        "nodes": len(nodes),
        "register_per_s": round(len(nodes) / register_s, 1),
        "saturation": sat,
        "realistic": real,
        "headroom": round(sat["requests_per_s"] / (len(nodes) / args.interval), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32, help="connections in the saturation phase")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat interval in the realistic phase")
    parser.add_argument("--workers", default="1,2", help="daphne process counts to compare, e.g. 1,2")
    args = parser.parse_args()

    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        print("warning: DATABASE_URL is not PostgreSQL; measuring SQLite instead", file=sys.stderr)
    folder = Path(tempfile.mkdtemp(prefix="bench-portal-"))
    runs = [run_one(args, int(w), folder) for w in args.workers.split(",")]
    load = os.getloadavg()
    result = {"cpu_cores": os.cpu_count(), "load_average_after": [round(x, 2) for x in load], "runs": runs}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
