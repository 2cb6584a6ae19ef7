"""#21 item 4 with real processes: a node stopped and restarted with its key file (on another port and span)
is the same node on the portal: one row, its reputation and earnings kept.

A portal (daphne, scratch database) and a SmolLM2 node announcing to it with ``--identity``. Between the
runs the node earns reputation (audit evidence) and credits (its escrow account), as the Celery tasks
would record them; after the restart the portal still has one row for it, with both.
"""

from __future__ import annotations

import json
import os

import pytest

from portal.processes import create_user_with_node_token, live_portal, manage
from swarmnode.discovery.tracker import fetch_spans
from swarmnode.launcher import start_node
from swarmnode.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.model]

NODE_ARGS = ["--backend", "torch", "--dtype", "float32"]

# What the portal holds about the user's nodes, as JSON (run in the portal's database by `manage.py shell`).
_NODES = """
import json
from portal.ledger.books import balance, escrow_account
from portal.reputation.scoring import node_score
from portal.swarm.models import Node
print(json.dumps([
    {"id": n.pk, "span": [n.start_block, n.end_block], "url": n.url, "state": n.state, "key": n.public_key,
     "score": node_score(n), "escrow": balance(escrow_account(n))}
    for n in Node.objects.filter(owner__username="keeper")
]))
"""

# The node's first run earned evidence and credits (what audits and settled receipts would record).
_EARN = """
from portal.ledger.books import escrow_account, post, system_account
from portal.reputation.scoring import record_signal
from portal.swarm.models import Node
node = Node.objects.get(owner__username="keeper")
record_signal(node, "audits", positive=6.0)
post("receipt", "test:first-run", [(system_account("system:rewards"), -75), (escrow_account(node), 75)])
"""


def _nodes(env) -> list[dict]:
    return json.loads(manage(["shell", "-c", _NODES], env).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("identity")
    with live_portal(folder, f"layerswarm_identity_{os.getpid()}", celery=False) as portal:
        portal.folder = folder
        yield portal


def test_a_node_restarted_with_its_key_on_another_port_and_span_is_the_same_node(portal):
    token = create_user_with_node_token(portal.env, "keeper", "keeper-password-1")
    args = [*NODE_ARGS, "--portal", portal.url, "--token", token, "--identity", str(portal.folder / "node.key")]

    def listed(start: int) -> bool:
        return [p.start_block for p in fetch_spans(portal.url, "smollm2")] == [start]

    first = start_node("smollm2", "0:10", extra_args=args, log_path=portal.folder / "first.log")
    try:
        wait_until(lambda: listed(0), 60, "the tracker to list the node")
        manage(["shell", "-c", _EARN], portal.env)
        [before] = _nodes(portal.env)
        assert before["escrow"] == 75 and before["score"] > 0.5
    finally:
        first.stop()

    second = start_node("smollm2", "10:20", extra_args=args, log_path=portal.folder / "second.log")
    try:
        assert second.url != first.url  # another port
        wait_until(lambda: listed(10), 60, "the tracker to list the restarted node")
        [after] = _nodes(portal.env)
        assert after["id"] == before["id"] and after["key"] == before["key"]
        assert after["span"] == [10, 20] and after["url"] == second.url
        assert after["escrow"] == 75
        assert after["score"] == pytest.approx(before["score"], abs=1e-3)  # decayed by seconds only
    finally:
        second.stop()
