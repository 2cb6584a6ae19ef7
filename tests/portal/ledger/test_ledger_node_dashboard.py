"""#21 item 4: nodes offline for more than a day fold into one line on the owner's dashboard."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from portal.accounts.models import NodeToken
from portal.swarm.models import Node
from swarmnode.trust.identity import NodeIdentity

pytestmark = pytest.mark.django_db


def _node(owner, model, port: int, state: str, seen: dt.timedelta) -> Node:
    return Node.objects.create(
        owner=owner, token=NodeToken.create_for(owner, f"run {port}")[0], model=model, start_block=0, end_block=10,
        url=f"ws://127.0.0.1:{port}/layerswarm/v1", backend="torch", device="cpu", dtype="float32", version="0",
        public_key=NodeIdentity.generate().public_key, state=state, last_seen_at=timezone.now() - seen,
    )  # fmt: skip


def test_it_folds_nodes_offline_for_more_than_a_day_into_a_summary_line(client, owner, smollm2):
    """What 15 demo restarts left before keys were identities: 3 live nodes and 12 long gone."""
    live = [_node(owner, smollm2, 1000 + i, Node.State.ONLINE, dt.timedelta(seconds=5)) for i in range(3)]
    recent = _node(owner, smollm2, 2000, Node.State.OFFLINE, dt.timedelta(hours=3))  # went offline today: shown
    for i in range(12):
        _node(owner, smollm2, 3000 + i, Node.State.OFFLINE, dt.timedelta(days=2, hours=i))
    client.force_login(owner)
    page = client.get("/nodes/dashboard/").content.decode()
    assert page.count('class="node-card"') == 4
    for node in [*live, recent]:
        assert f'id="node-{node.pk}"' in page
    assert "12 nodes offline for more than a day" in page
    assert "You run no nodes yet" not in page


def test_an_owner_whose_nodes_are_all_long_gone_sees_only_the_line(client, owner, smollm2):
    _node(owner, smollm2, 1, Node.State.OFFLINE, dt.timedelta(days=3))
    client.force_login(owner)
    page = client.get("/nodes/dashboard/").content.decode()
    assert 'class="node-card"' not in page and "You run no nodes yet" not in page
    assert "1 node offline for more than a day" in page and "its earnings are in the totals" in page
