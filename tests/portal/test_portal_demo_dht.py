"""``make demo`` with the DHT (#18): the portal's bootstrap peer starts, its addresses are published, and a second
run comes back under the same peer id (its key file), so addresses that were handed out keep their peer id."""

from __future__ import annotations

import pytest

from portal.management.commands.run_demo import DemoBootstrap, dht_installed
from portal.swarm.dht_reader import bootstrap_addrs

pytestmark = pytest.mark.slow


def peer_id(addr: str) -> str:
    return addr.rsplit("/p2p/", 1)[1]


def test_the_demo_runs_the_portals_bootstrap_peer_and_publishes_it(settings, tmp_path):
    if not dht_installed():
        pytest.skip("the dht extra (hivemind) is not installed")
    from swarmnode.dht import open_dht

    settings.VAR_DIR, settings.SWARM_DHT_BOOTSTRAP = tmp_path, []
    boot = DemoBootstrap(tmp_path / "demo" / "dht-bootstrap.log")
    try:
        assert boot.addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in boot.addrs)
        assert bootstrap_addrs() == boot.addrs  # what the Contribute page and /api/v1/swarm/bootstrap/ publish
        client = open_dht(boot.addrs, client_mode=True)  # a node or client joins through it
        client.close()
    finally:
        boot.stop()
    assert boot.process.returncode == 0 and bootstrap_addrs() == []  # a stopped peer is published no more
    again = DemoBootstrap(tmp_path / "demo" / "dht-bootstrap.log")
    try:
        assert {peer_id(a) for a in again.addrs} == {peer_id(a) for a in boot.addrs}
    finally:
        again.stop()
