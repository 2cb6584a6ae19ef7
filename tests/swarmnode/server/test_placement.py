"""The swarm view a joining node builds, and ``--blocks auto`` against real nodes."""

import random

from swarmnode.discovery import PeerInfo
from swarmnode.server.placement import auto_blocks, placements


def peer(url, start, end, tps=0.0, state="online"):
    return PeerInfo(url, "m", start, end, 30, 64, "float32", 1, 1, tps, state=state)


def test_it_gives_nodes_of_unknown_speed_the_median_rate():
    view = [peer("a", 0, 10, tps=10.0), peer("b", 10, 20, tps=30.0), peer("c", 20, 30)]
    rates = [p.rate for p in placements(view)]
    assert rates[:2] == [100.0, 300.0] and rates[2] == 200.0


def test_it_joins_a_swarm_it_can_read(tiny_node):
    # The tiny node serves all 6 blocks evenly: every 3-block window is as good as any other.
    start, end = auto_blocks("llama", 6, 3, None, [tiny_node.url], rng=random.Random(1))
    assert end - start == 3 and 0 <= start <= 3
    assert auto_blocks("llama", 6, 3, None, [], rng=random.Random(1))[0] in range(4)  # an empty swarm: anywhere
