"""RTT table (smoothing, expiry) and pings to a real node."""

from swarmnode.client.latency import RttTable, ping, ping_all


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_it_smooths_rtts():
    table = RttTable(alpha=0.5, clock=Clock())
    assert table.record("n", 0.1) == 0.1
    assert table.record("n", 0.3) == 0.2
    assert table.snapshot() == {"n": 0.2}


def test_it_forgets_stale_rtts():
    clock = Clock()
    table = RttTable(ttl_s=10.0, clock=clock)
    table.record("n", 0.1)
    clock.now = 11.0
    assert table.get("n") is None and table.get("n", 0.5) == 0.5
    assert table.stale(["n"]) == ["n"]
    assert table.record("n", 0.4) == 0.4  # an expired value does not weigh on the new one


def test_it_pings_real_nodes_and_reports_the_dead(tiny_node):
    info, rtt = ping(tiny_node.url)
    assert info.end_block == 6 and 0 < rtt < 5
    table = RttTable()
    infos, errors = ping_all([tiny_node.url, "ws://127.0.0.1:9/layerswarm/v1"], table, timeout=2.0)
    assert [i.url for i in infos] == [tiny_node.url]
    assert list(errors) == ["ws://127.0.0.1:9/layerswarm/v1"]
    assert table.get(tiny_node.url) is not None
