"""Locust load of the tracker: simulated nodes heartbeating at a fixed interval, over a pool of connections.

Each Locust user is one keep-alive connection (``HEARTBEAT_CONNECTIONS`` of them, as nginx's upstream keepalive
pool in front of gunicorn, deploy/) that sends the heartbeats of its share of the nodes in turn, each node every
``HEARTBEAT_INTERVAL`` seconds. One Locust user per node (1,000 users in one process) measured Locust, not the
portal: against a trivial WSGI app, at the same 100 requests/s, its p50 grew with the user count (10 users: 14 ms,
100: 100 ms, 1,000: 0.6-0.9 s, also with ``--processes 4``) while a plain asyncio client holding 1,000
keep-alive connections saw 2.3 ms (#24 goal 5).

Run by ``bench/portal_heartbeats.py`` (``make bench-portal``), which registers the nodes and passes, in the
environment:

- ``HEARTBEAT_NODES``: a JSON file of ``[token, node_id]`` pairs (one per user);
- ``HEARTBEAT_INTERVAL``: seconds between one node's heartbeats (offered load = nodes / interval);
- ``HEARTBEAT_CONNECTIONS``: Locust users (connections) sharing the nodes (``-u`` must be the same);
- ``HEARTBEAT_WARMUP``: seconds before measuring (every node has sent its first beat by then);
- ``HEARTBEAT_PIDS``: the portal's process ids, whose CPU time is read from ``/proc`` over the same window as
  the latencies (plus every ``postgres`` and ``redis-server`` process, reported apart);
- ``HEARTBEAT_RESULT``: where the JSON result goes.

Stats and CPU counters start together after the warm-up and stop together when Locust stops, so
``cpu_ms_per_heartbeat`` and the percentiles describe the same heartbeats.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time

import gevent
from locust import FastHttpUser, constant_pacing, events, task
from portal_heartbeats import cpu_seconds  # Locust puts this file's folder on sys.path

NODES = json.loads(open(os.environ["HEARTBEAT_NODES"]).read()) if os.environ.get("HEARTBEAT_NODES") else []
INTERVAL = float(os.environ.get("HEARTBEAT_INTERVAL", "10"))
WARMUP = float(os.environ.get("HEARTBEAT_WARMUP", str(INTERVAL)))
CONNECTIONS = max(1, min(int(os.environ.get("HEARTBEAT_CONNECTIONS", "32")), len(NODES) or 1))
_next_user = itertools.count()


def _counters() -> dict[str, float]:
    pids = [int(p) for p in os.environ.get("HEARTBEAT_PIDS", "").split(",") if p]
    locust = os.times()
    return {
        "portal": cpu_seconds(pids),
        "postgres": cpu_seconds(comm="postgres"),
        "redis": cpu_seconds(comm="redis-server"),
        "locust": locust.user + locust.system,
        "wall": time.monotonic(),
    }


class HeartbeatConnection(FastHttpUser):
    """One connection carrying the heartbeats of nodes ``i, i + CONNECTIONS, ...``: each node that registered
    before the run says "still alive" every ``HEARTBEAT_INTERVAL`` s, the connection's nodes evenly spread."""

    def on_start(self) -> None:
        mine = NODES[next(_next_user) % CONNECTIONS :: CONNECTIONS]
        self.beats = itertools.cycle(
            [({"Authorization": f"Bearer {t}"}, f"/api/v1/nodes/{n}/heartbeat/") for t, n in mine]
        )
        self.pace = INTERVAL / len(mine)
        self._pacing = constant_pacing(self.pace)
        gevent.sleep(random.uniform(0, self.pace))  # connections out of phase with each other

    def wait_time(self) -> float:
        return self._pacing(self)

    @task
    def heartbeat(self) -> None:
        headers, path = next(self.beats)
        body = {"cache_tokens_left": random.randrange(0, 32768), "open_sessions": random.randrange(0, 8)}
        self.client.post(path, json=body, headers=headers, name="heartbeat")


_window: dict[str, dict[str, float]] = {}


def _start_measuring(environment) -> None:
    gevent.sleep(WARMUP)
    environment.runner.stats.reset_all()
    _window["start"] = _counters()


@events.test_start.add_listener
def _on_test_start(environment, **kwargs) -> None:
    gevent.spawn(_start_measuring, environment)


@events.test_stop.add_listener
def _on_test_stop(environment, **kwargs) -> None:
    if "start" not in _window or not os.environ.get("HEARTBEAT_RESULT"):
        return
    end, start = _counters(), _window["start"]
    total = environment.runner.stats.total
    served = max(1, total.num_requests - total.num_failures)
    seconds = end["wall"] - start["wall"]
    result = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "seconds": round(seconds, 2),
        "achieved_per_s": round(served / seconds, 1),
        "p50_ms": total.get_response_time_percentile(0.5),
        "p95_ms": total.get_response_time_percentile(0.95),
        "p99_ms": total.get_response_time_percentile(0.99),
        "max_ms": round(total.max_response_time or 0, 1),
    }
    for name in ("portal", "postgres", "redis", "locust"):
        result[f"{name}_cpu_ms_per_heartbeat"] = round((end[name] - start[name]) * 1000 / served, 3)
    with open(os.environ["HEARTBEAT_RESULT"], "w") as f:
        json.dump(result, f)
