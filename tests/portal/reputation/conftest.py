"""Fixtures of the reputation tests: nodes of the owner and of another user."""

from __future__ import annotations

import pytest

from portal.accounts.models import NodeToken
from portal.swarm.models import Node


def _make_node(user, model, start=0, end=10, port=41000, **fields) -> Node:
    token = NodeToken.create_for(user, f"{user.username}'s machine {port}")[0]
    defaults = {
        "backend": "torch",
        "device": "cpu",
        "dtype": "float32",
        "version": "0.1.0",
        "throughput": 20.0,
        "state": Node.State.ONLINE,
    }
    defaults.update(fields)
    return Node.objects.create(
        owner=user,
        token=token,
        model=model,
        start_block=start,
        end_block=end,
        url=f"ws://127.0.0.1:{port}/layerswarm/v1",
        **defaults,
    )


@pytest.fixture
def make_node(smollm2):
    """``make_node(user, start=0, end=10, port=..., **fields)``: an online node row."""
    return lambda user, **kw: _make_node(user, smollm2, **kw)


@pytest.fixture
def node(owner, make_node) -> Node:
    """An online node of the owner serving smollm2 blocks 0:10."""
    return make_node(owner, port=41001)


@pytest.fixture
def other_node(other, make_node) -> Node:
    """An online node of the other user serving the same blocks 0:10 (an auditor for ``node``)."""
    return make_node(other, port=41002)


@pytest.fixture
def admin_client_for(admin_user):
    """``admin_client_for()``: a Django test client logged in as a superuser."""
    from django.test import Client

    def make():
        client = Client()
        client.force_login(admin_user)
        return client

    return make


def _receipts(user, node: Node, sessions: int = 1, tokens: int = 100) -> None:
    """Receipts ``node`` countersigned for ``user``'s client key: the user's sessions with the node."""
    import secrets

    from django.utils import timezone

    from portal.ledger.models import ClientKey, Receipt

    key, _ = ClientKey.objects.get_or_create(
        key=f"ed25519:{user.username:_<43}"[:60], defaults={"user": user, "name": f"{user.username}'s client"}
    )
    for i in range(sessions):
        Receipt.objects.create(
            receipt_id=secrets.token_hex(16),
            session_id=f"{user.username}-session-{i}",
            model=node.model.name,
            start_block=node.start_block,
            end_block=node.end_block,
            tokens=tokens,
            block_tokens=tokens * (node.end_block - node.start_block),
            client_key=key,
            node=node,
            earner=node.owner,
            issued_at=timezone.now(),
            receipt="e30",
            client_signature="sig",
            node_signature="sig",
        )


@pytest.fixture
def dealt():
    """``dealt(user, node, sessions=1, tokens=100)``: give ``user`` countersigned sessions with ``node``."""
    return _receipts
