"""A node operator cannot list a private address on the tracker: every reader would dial it (#17 finding 12)."""

import pytest

from portal.accounts.models import NodeToken
from portal.swarm import tracker
from swarmnode.discovery import PeerInfo

pytestmark = pytest.mark.django_db

INTERNAL = [
    "ws://169.254.169.254:80/",  # the cloud metadata service
    "ws://10.0.0.5:8000/ws",
    "ws://127.0.0.1:6379/",  # the portal host's own Redis
    "ws://localhost:5432/",
    "ws://[::1]:8000/ws",
    "ws://[::ffff:192.168.1.1]:8000/ws",
]


def _reg(url: str) -> PeerInfo:
    return PeerInfo(model="smollm2", start_block=0, end_block=10, url=url, backend="torch", device="cpu",
                    dtype="float32", version="0.1.0")  # fmt: skip


@pytest.mark.parametrize("url", INTERNAL)
def test_a_production_tracker_refuses_to_list_a_private_address(owner, smollm2, settings, url):
    settings.ALLOW_PRIVATE_PEERS = False
    token = NodeToken.create_for(owner, "gpu")[0]
    with pytest.raises(tracker.TrackerError) as refused:
        tracker.register_node(token, _reg(url))
    assert refused.value.code == "private_address"
    assert not list(tracker.online_spans("smollm2"))


def test_it_lists_public_addresses_and_private_ones_where_the_operator_allows(owner, smollm2, settings):
    token = NodeToken.create_for(owner, "gpu")[0]
    settings.ALLOW_PRIVATE_PEERS = False
    node, created = tracker.register_node(token, _reg("ws://93.184.216.34:8000/ws"))
    assert created and node.url == "ws://93.184.216.34:8000/ws"
    settings.ALLOW_PRIVATE_PEERS = True  # a LAN swarm, tests on loopback
    other = tracker.register_node(token, PeerInfo(**{**_reg("ws://10.0.0.5:8000/ws").__dict__, "start_block": 10,
                                                     "end_block": 20}))[0]  # fmt: skip
    assert other.url == "ws://10.0.0.5:8000/ws"
