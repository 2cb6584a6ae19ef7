"""What one DHT peer (swarmnode/dht/engine.py) holds back: records past the per-key cap, and its libp2p daemon when
the process dies.

Real peers on loopback: a stranger's plain hivemind peer stores valid signed records of many keys under one block
key, and a Python process holding a DHT peer is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import psutil
import pytest

from swarmnode.dht.records import block_key, node_id
from swarmnode.discovery import PeerInfo
from swarmnode.testing.polling import wait_until
from swarmnode.trust.identity import NodeIdentity

pytest.importorskip("hivemind")
pytestmark = pytest.mark.slow

CAP = 5


def _record(identity: NodeIdentity, port: int) -> tuple[dict, bytes]:
    from swarmnode.dht import signed

    peer = PeerInfo(
        url=f"ws://127.0.0.1:{port}/layerswarm/v1",
        model="llama",
        start_block=0,
        end_block=1,
        num_blocks=6,
        hidden_size=64,
        public_key=identity.public_key,
    )
    return signed(peer, identity, 60.0)


def _store(addrs: list[str], identities: list[NodeIdentity], records: list[tuple[dict, bytes]]) -> list[bool]:
    """A stranger's peer (plain hivemind, no validator of ours) stores ``records`` as its nodes' records."""
    from hivemind.dht.node import DHTNode

    key = block_key("llama", 0)
    subkeys = [node_id(i.public_key) for i in identities]

    async def run():
        node = await DHTNode.create(initial_peers=addrs, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        try:
            values, expires = [v for _, v in records], [r["expires"] for r, _ in records]
            done = await node.store_many([key] * len(values), values, expires, subkeys=subkeys, exclude_self=True)
            return [done[(key, s)] for s in subkeys]
        finally:
            await node.shutdown()

    return asyncio.run(run())


def test_a_peer_stores_at_most_the_cap_of_records_under_one_key():
    from swarmnode.dht import open_dht

    dht = open_dht()  # a first peer: the only one the stranger can store on
    try:
        dht.node.protocol.storage.max_subkeys = CAP  # MAX_RECORDS_PER_KEY (256) in production
        addrs = dht.visible_addrs()
        flood = [NodeIdentity.generate() for _ in range(CAP + 3)]
        stored = _store(addrs, flood, [_record(i, 7000 + k) for k, i in enumerate(flood)])
        assert sum(stored) == CAP  # the first CAP node ids that arrived; the rest refused
        held = [k for k, ok in enumerate(stored) if ok]
        # A record already held is refreshed (a node re-announcing) even under a full key.
        assert _store(addrs, [flood[held[0]]], [_record(flood[held[0]], 7100)]) == [True]
        listed = {p.url for p in dht.lookup("llama", range(1))}
        assert listed == {f"ws://127.0.0.1:{7000 + k}/layerswarm/v1" for k in held[1:]} | {
            "ws://127.0.0.1:7100/layerswarm/v1"
        }
    finally:
        dht.close()


PEER = """
import sys, time
from swarmnode.dht import open_dht
dht = open_dht()
print(dht.visible_addrs()[0], flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_process_leaves_no_libp2p_daemon_behind():
    """The daemon gets PR_SET_PDEATHSIG. (On these machines p2pd was also seen to exit by itself when its parent was
    SIGKILLed, with or without it: this test guards the outcome, which the signal makes certain.)"""
    proc = subprocess.Popen([sys.executable, "-c", PEER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("/ip4/127.0.0.1/tcp/")
        [daemon] = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "p2pd"]
        proc.kill()  # SIGKILL, as a crash or the OOM killer: no shutdown code runs
        proc.wait()
        wait_until(lambda: _gone(daemon.pid), 10, "the orphaned p2pd to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
