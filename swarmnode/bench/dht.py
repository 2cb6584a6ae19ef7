"""``swarmnode bench-dht``: what the DHT costs, on loopback: N real DHT peers (one libp2p daemon each).

Measured in one run: how long a client's lookup of a model's spans takes (p50/p95, every block key), what one
node's announcement costs (CPU ms of this process and of the daemons, payload bytes, bytes seen on loopback) and
the memory one DHT peer takes (its daemon's RSS plus this process's growth per peer).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from swarmnode.dht import open_dht, signed
from swarmnode.discovery import PeerInfo
from swarmnode.trust.identity import NodeIdentity

REPLICAS = 5  # hivemind's num_replicas: each key is stored on this many nearest peers


def _cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of this process and its children (the libp2p daemons) so far."""
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def _daemons_rss(proc: psutil.Process) -> int:
    total = 0
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _loopback_bytes() -> int | None:
    counters = psutil.net_io_counters(pernic=True).get("lo")
    return counters.bytes_sent if counters else None


def _cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_bench(nodes: int = 50, lookups: int = 50, num_blocks: int = 30, span: int = 10) -> dict:
    """Start ``nodes`` DHT peers, announce one record from each, time ``lookups`` lookups; return the report.

    Raises:
        ValueError: fewer than 2 nodes, or a span longer than the model.
    """
    if nodes < 2 or not 0 < span <= num_blocks:
        raise ValueError("need at least 2 nodes and 0 < span <= num_blocks")
    me = psutil.Process()
    rss_before = me.memory_info().rss
    started = time.perf_counter()
    boot = open_dht(host="127.0.0.1")
    addrs = boot.visible_addrs()
    with ThreadPoolExecutor(8) as pool:
        peers = [boot, *pool.map(lambda _: open_dht(addrs, host="127.0.0.1"), range(nodes - 1))]
    start_s = time.perf_counter() - started
    try:
        memory_per_peer = (_daemons_rss(me) + me.memory_info().rss - rss_before) / nodes
        daemon_rss = _daemons_rss(me) / nodes
        announce_cpu, announce_wall, payload, keys_stored = [], [], [], 0
        lo_before = _loopback_bytes()
        for i, dht in enumerate(peers):
            identity = NodeIdentity.generate()
            start = (i * span) % (num_blocks - span + 1)
            peer = PeerInfo(
                url=f"ws://127.0.0.1:{20000 + i}/layerswarm/v1",
                model="bench",
                start_block=start,
                end_block=start + span,
                num_blocks=num_blocks,
                hidden_size=576,
                public_key=identity.public_key,
                throughput=10.0,
            )
            record, value = signed(peer, identity, ttl=600)
            cpu0, t0 = _cpu_s(me), time.perf_counter()
            keys_stored += dht.announce((record, value))
            announce_wall.append(time.perf_counter() - t0)
            announce_cpu.append(_cpu_s(me) - cpu0)
            payload.append(len(value) * span * REPLICAS)
        lo_after = _loopback_bytes()
        client = open_dht(addrs, client_mode=True)
        try:
            times, found = [], 0
            for _ in range(lookups):
                t0 = time.perf_counter()
                found = len(client.lookup("bench", range(num_blocks)))
                times.append(time.perf_counter() - t0)
        finally:
            client.close()
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda d: d.close(), peers))
    return {
        "nodes": nodes,
        "num_blocks": num_blocks,
        "span": span,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "start_all_s": round(start_s, 2),
        "lookup_p50_ms": round(statistics.median(times) * 1000, 1),
        "lookup_p95_ms": round(_quantile(times, 0.95) * 1000, 1),
        "lookup_found_nodes": found,
        "announce_wall_p50_ms": round(statistics.median(announce_wall) * 1000, 1),
        "announce_cpu_ms_per_node": round(statistics.mean(announce_cpu) * 1000, 1),
        "announce_payload_bytes_per_node": round(statistics.mean(payload)),
        "announce_loopback_bytes_per_node": round((lo_after - lo_before) / nodes) if lo_before is not None else None,
        "keys_stored": keys_stored,
        "memory_per_peer_mb": round(memory_per_peer / 2**20, 1),
        "daemon_rss_per_peer_mb": round(daemon_rss / 2**20, 1),
    }
