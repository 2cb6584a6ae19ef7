"""#21 item 4: a node is its identity key. A restart, a new address, span or token is the same node row;
rows that earlier restarts split off are merged into one per key by migration 0007."""

from __future__ import annotations

import datetime as dt
import importlib

import pytest
from django.apps import apps
from django.utils import timezone

from portal.accounts.models import NodeToken
from portal.ledger.books import escrow_account
from portal.ledger.models import Account
from portal.ledger.receipts import node_for_key
from portal.reputation.models import AuditEvidence, NodeStanding, ScoreSnapshot
from portal.swarm.models import Heartbeat, Node
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import key_of

pytestmark = pytest.mark.django_db

URL = "ws://127.0.0.1:40001/layerswarm/v1"


def _register(node_client, register, token: str, identity: NodeIdentity, **overrides):
    """Register as the real node does: the identity key proven with a fresh challenge."""
    nonce = node_client(token).post("/api/v1/nodes/key-challenge/", {}, format="json").json()["nonce"]
    proof = {"nonce": nonce, "signature": identity.prove_key(nonce)}
    return register(token, public_key=identity.public_key, key_proof=proof, **overrides)


def test_it_keeps_one_row_when_a_node_restarts_on_another_port_span_and_token(
    owner, owner_token, node_client, register, heartbeat
):
    identity = NodeIdentity.generate()
    first = _register(node_client, register, owner_token, identity, url=URL)
    assert first.status_code == 201
    node_id = first.json()["id"]
    assert heartbeat(owner_token, node_id).status_code == 200
    # Crashed (no goodbye), restarted on a new port with a new span: still online in the tracker meanwhile.
    moved = _register(node_client, register, owner_token, identity, url=URL.replace("40001", "40002"), end_block=20)
    assert moved.status_code == 200 and moved.json()["id"] == node_id
    # A new token (the demo makes one per run; an owner may rotate theirs), the model's other half.
    token = NodeToken.create_for(owner, "rotated")[1]
    again = _register(node_client, register, token, identity, url=URL, start_block=20, end_block=30)
    assert again.status_code == 200 and again.json()["id"] == node_id
    node = Node.objects.get()
    assert (node.start_block, node.end_block, node.url, node.token.name) == (20, 30, URL, "rotated")
    # The old token's process is gone from the tracker's view: its heartbeats name no node of that token.
    assert heartbeat(owner_token, node_id).status_code == 404
    assert heartbeat(token, node_id).status_code == 200


def test_it_refuses_a_banned_node_that_restarts_elsewhere(owner, owner_token, node_client, register):
    """Before, a banned node only had to restart on another port to come back as a fresh, unbanned row."""
    identity = NodeIdentity.generate()
    assert _register(node_client, register, owner_token, identity, url=URL).status_code == 201
    Node.objects.update(banned=True)
    response = _register(node_client, register, owner_token, identity, url=URL.replace("40001", "40009"))
    assert response.status_code == 403 and response.json()["error"] == "banned"
    assert Node.objects.count() == 1


def test_a_node_restarted_with_a_new_key_on_its_port_replaces_its_dead_predecessor(
    owner_token, node_client, register, heartbeat
):
    """A node without a key file has a new key each run: another node. Its crashed predecessor, still
    online in the tracker at the same address, must not make the restart an 'overlapping span'."""
    old = _register(node_client, register, owner_token, NodeIdentity.generate(), url=URL).json()["id"]
    assert heartbeat(owner_token, old).status_code == 200
    new = _register(node_client, register, owner_token, NodeIdentity.generate(), url=URL)
    assert new.status_code == 201
    assert Node.objects.get(pk=old).state == Node.State.OFFLINE
    other_span = _register(node_client, register, owner_token, NodeIdentity.generate(), url=URL.replace("1/", "7/"))
    assert other_span.status_code == 409 and other_span.json()["error"] == "overlapping_span"


def test_receipts_for_a_span_the_node_served_before_it_moved_are_its_own(owner_token, node_client, register):
    identity = NodeIdentity.generate()
    node_id = _register(node_client, register, owner_token, identity, url=URL).json()["id"]
    assert (
        _register(node_client, register, owner_token, identity, url=URL, start_block=10, end_block=20).json()["id"]
        == node_id
    )
    assert node_for_key(key_of(identity), "smollm2", 0, 10).pk == node_id
    assert node_for_key(key_of(NodeIdentity.generate()), "smollm2", 0, 10) is None


def _row(owner, identity, model, port: int, seen_hours_ago: float, **extra) -> Node:
    now = timezone.now()
    extra.setdefault("state", Node.State.OFFLINE)
    return Node.objects.create(
        owner=owner, token=NodeToken.create_for(owner, f"run {port}")[0], model=model, start_block=0, end_block=10,
        url=f"ws://127.0.0.1:{port}/layerswarm/v1", backend="torch", device="cpu", dtype="float32", version="0",
        public_key=identity.public_key, last_seen_at=now - dt.timedelta(hours=seen_hours_ago),
        registered_at=now - dt.timedelta(hours=seen_hours_ago + 1), **extra,
    )  # fmt: skip


def test_the_migration_merges_the_rows_of_one_key_into_the_last_seen_one(owner, other, smollm2, settings):
    settings.REPUTATION_HALF_LIFE = 10**9  # no decay between the rows' moments: the sums are exact
    identity, alone = NodeIdentity.generate(), NodeIdentity.generate()
    oldest = _row(owner, identity, smollm2, 1, 50)
    middle = _row(owner, identity, smollm2, 2, 30)
    newest = _row(owner, identity, smollm2, 3, 1, state=Node.State.ONLINE)
    single = _row(owner, alone, smollm2, 4, 5)
    copy = _row(other, identity, smollm2, 5, 0)  # another account's copy of the key: not this node
    now = timezone.now()
    NodeStanding.objects.create(node=oldest, signals={"audits": [2.0, 1.0]}, updated_at=now)
    NodeStanding.objects.create(node=newest, signals={"audits": [3.0, 0.0], "steps": [1.0, 0.0]}, updated_at=now)
    for node in (oldest, middle, newest):
        Heartbeat.objects.create(node=node)
        ScoreSnapshot.objects.create(node=node, score=0.6)
    AuditEvidence.objects.create(node=oldest, passed=True, fingerprint="same-result")
    AuditEvidence.objects.create(node=middle, passed=True, fingerprint="same-result")
    AuditEvidence.objects.create(node=middle, passed=False, auditor=oldest)
    escrow = escrow_account(middle)

    migration = importlib.import_module("portal.swarm.migrations.0007_merge_nodes_by_key")
    migration.merge_nodes_by_key(apps, None)

    assert set(Node.objects.values_list("pk", flat=True)) == {newest.pk, single.pk, copy.pk}
    newest.refresh_from_db()
    assert newest.state == Node.State.ONLINE and newest.url.endswith(":3/layerswarm/v1")
    assert newest.registered_at == oldest.registered_at  # the node's age, which escrow release reads
    assert Heartbeat.objects.filter(node=newest).count() == 3
    assert ScoreSnapshot.objects.filter(node=newest).count() == 3
    assert AuditEvidence.objects.filter(node=newest).count() == 2  # one result recorded twice is kept once
    assert AuditEvidence.objects.get(passed=False).auditor == newest
    standing = NodeStanding.objects.get()
    assert standing.node == newest
    assert standing.signals == {"audits": [5.0, 1.0], "steps": [1.0, 0.0]}
    assert standing.score == pytest.approx(
        (6.0 + settings.REPUTATION_PRIOR * settings.REPUTATION_PRIOR_WEIGHT) / (7.0 + settings.REPUTATION_PRIOR_WEIGHT)
    )
    assert Account.objects.get(pk=escrow.pk).node == newest  # the escrow keeps its credits, now the node's
    copy.refresh_from_db()
    assert copy.owner == other and NodeStanding.objects.filter(node=copy).count() == 0


def test_the_migration_keeps_a_ban_of_any_merged_row(owner, smollm2):
    identity = NodeIdentity.generate()
    _row(owner, identity, smollm2, 1, 20, banned=True)
    survivor = _row(owner, identity, smollm2, 2, 1, state=Node.State.ONLINE)
    importlib.import_module("portal.swarm.migrations.0007_merge_nodes_by_key").merge_nodes_by_key(apps, None)
    survivor.refresh_from_db()
    assert Node.objects.count() == 1 and survivor.banned and survivor.state == Node.State.OFFLINE
