"""Who owns a node key (#17 finding 1): the first proven account; keys announced before proofs existed."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from portal.accounts.models import NodeToken
from portal.swarm.models import Node, NodeKey
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import key_of

pytestmark = pytest.mark.django_db


def _node(user, identity: NodeIdentity, model, port: int) -> Node:
    return Node.objects.create(
        owner=user, token=NodeToken.create_for(user, f"m{port}")[0], model=model, start_block=0, end_block=10,
        url=f"ws://127.0.0.1:{port}/layerswarm/v1", backend="torch", device="cpu", dtype="float32", version="0",
        public_key=identity.public_key,
    )  # fmt: skip


def test_it_never_hands_a_claimed_key_to_another_account(owner, other):
    key = NodeIdentity.generate().public_key
    assert NodeKey.claim(owner.pk, key) and NodeKey.claim(owner.pk, key)
    assert not NodeKey.claim(other.pk, key)
    assert NodeKey.objects.get().owner == owner
    with pytest.raises(ValueError):
        NodeKey.claim(owner.pk, "ed25519:not-a-key,x25519:nope")


def test_the_migration_gives_old_keys_to_their_one_account_and_leaves_disputed_ones_unowned(owner, other, smollm2):
    """Before proofs, a copied key could sit on two accounts' nodes: nobody owns it until a node proves it."""
    mine, disputed = NodeIdentity.generate(), NodeIdentity.generate()
    _node(owner, mine, smollm2, 1)
    _node(owner, disputed, smollm2, 2)
    _node(other, disputed, smollm2, 3)  # the copy
    NodeKey.objects.all().delete()  # as the table was right after it was created
    migration = importlib.import_module("portal.swarm.migrations.0006_node_key")
    migration.claim_unambiguous_keys(apps, None)
    assert dict(NodeKey.objects.values_list("signing_key", "owner")) == {key_of(mine): owner.pk}
