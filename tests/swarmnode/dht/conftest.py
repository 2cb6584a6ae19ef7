"""DHT test helpers: a real bootstrap peer (``swarmnode dht serve``) and killing a node with its libp2p daemon."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from swarmnode.discovery import PeerInfo
from swarmnode.launcher import stdout_events


def smollm2_peer(identity, start: int = 0, end: int = 10, url: str = "ws://10.0.0.1:7000/layerswarm/v1", **fields):
    """A SmolLM2 node's announcement (``PeerInfo``) under ``identity``'s key; ``fields`` replace the defaults."""
    return PeerInfo(
        url=url,
        model="smollm2",
        start_block=start,
        end_block=end,
        num_blocks=30,
        hidden_size=576,
        throughput=fields.pop("throughput", 12.5),
        cache_tokens_left=4096,
        backend=fields.pop("backend", "onnxruntime"),
        dtype="float32",
        version=fields.pop("version", "0.9"),
        public_key=identity.public_key,
        **fields,
    )


@dataclass
class DHTPeerProcess:
    """A running ``swarmnode dht serve`` and the multiaddrs its ready line named."""

    process: subprocess.Popen
    addrs: list[str]

    def stop(self) -> None:
        """SIGTERM it (it stops its libp2p daemon) and wait."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            kill_with_daemons(self.process)


def start_dht_peer(
    log_path: Path, *extra: str, timeout: float = 120.0, cmd: list[str] | None = None, env: dict | None = None
) -> DHTPeerProcess:
    """Start ``swarmnode dht serve`` on loopback (or ``cmd``: another command printing the same ready line) and wait
    for its ready line."""
    cmd = cmd or [sys.executable, "-m", "swarmnode", "dht", "serve", "--host", "127.0.0.1", *extra]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, bufsize=0, env=env)
    for msg in stdout_events(proc, timeout):
        if msg.get("event") == "ready":
            return DHTPeerProcess(proc, msg["addrs"])
    kill_with_daemons(proc)
    raise RuntimeError(f"the DHT peer did not become ready; see {log_path}")


def kill_with_daemons(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` as a crash would, then its orphaned children (hivemind's p2pd), which a crash leaves behind."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.kill()
    proc.wait()
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory):
    """One bootstrap DHT peer for the module."""
    peer = start_dht_peer(tmp_path_factory.mktemp("dht") / "bootstrap.log")
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def dht_client(bootstrap):
    """A client-mode DHT peer in this process, for lookups."""
    from swarmnode.dht import open_dht

    dht = open_dht(bootstrap.addrs, client_mode=True)
    yield dht
    dht.close()
