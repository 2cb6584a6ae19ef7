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
