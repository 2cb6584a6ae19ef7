"""``swarmnode bench-dht`` end to end on a few real DHT peers: the report holds every number, and they add up."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_it_reports_lookup_announce_and_memory_costs():
    cmd = [sys.executable, "-m", "swarmnode", "bench-dht", "--nodes", "3", "--lookups", "3"]
    out = subprocess.run(
        [*cmd, "--num-blocks", "6", "--span", "3", "--json"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 3 and report["lookup_found_nodes"] == 3  # every announced node is found
    assert report["keys_stored"] == 3 * 3  # each node's record under each block of its span
    assert 0 < report["lookup_p50_ms"] <= report["lookup_p95_ms"]
    assert report["announce_cpu_ms_per_node"] > 0 and report["announce_payload_bytes_per_node"] > 0
    assert report["memory_per_peer_mb"] > 0 and report["daemon_rss_per_peer_mb"] > 0
