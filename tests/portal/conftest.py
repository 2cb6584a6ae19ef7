"""Fixtures of the portal tests: an owner, another user and an anonymous visitor, each with a client."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from portal.accounts.models import ApiKey, NodeToken
from portal.swarm.models import SwarmModel


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The production hasher costs ~0.3 s per password: too slow for fixtures made per test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def owner(db) -> User:
    return User.objects.create_user("alice", "alice@example.com", "alice-password-1")


@pytest.fixture
def other(db) -> User:
    return User.objects.create_user("bob", "bob@example.com", "bob-password-1")


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


@pytest.fixture
def owner_client(owner) -> APIClient:
    client = APIClient()
    client.force_login(owner)
    return client


@pytest.fixture
def other_client(other) -> APIClient:
    client = APIClient()
    client.force_login(other)
    return client


@pytest.fixture
def owner_token(owner) -> str:
    """A node token of the owner, in plain text."""
    return NodeToken.create_for(owner, "alice's GPU")[1]


@pytest.fixture
def other_token(other) -> str:
    return NodeToken.create_for(other, "bob's GPU")[1]


@pytest.fixture
def owner_api_key(owner) -> str:
    return ApiKey.create_for(owner, "alice's script")[1]


@pytest.fixture
def smollm2(db) -> SwarmModel:
    """The model the migrations seed (seeded again after transactional tests flush the tables)."""
    return SwarmModel.objects.get_or_create(
        name="smollm2",
        defaults={
            "num_blocks": 30,
            "hidden_size": 576,
            "description": "SmolLM2-135M-Instruct (Llama, 30 blocks)",
            "source": "smollm2",
            "architecture": "llama",
            "size_bytes": 538090408,
        },
    )[0]


def _node_client(token: str) -> APIClient:
    """A client that sends ``token`` as a bearer secret (what ``swarmnode serve --token`` does)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def _registration(**overrides) -> dict:
    """A valid registration payload for smollm2 blocks 0:10."""
    body = {
        "model": "smollm2",
        "start_block": 0,
        "end_block": 10,
        "url": "ws://127.0.0.1:40001/layerswarm/v1",
        "backend": "torch",
        "device": "cpu",
        "dtype": "float32",
        "throughput": 12.5,
        "cache_tokens_left": 32768,
        "max_session_length": 8192,
        "version": "0.1.0",
        "public_key": "",
    }
    body.update(overrides)
    return body


def _register(token: str, **overrides):
    """POST a registration with ``token``; return the response."""
    return _node_client(token).post("/api/v1/nodes/register/", _registration(**overrides), format="json")


def _heartbeat(token: str, node_id: int, **body):
    """POST a heartbeat for ``node_id`` with ``token``."""
    return _node_client(token).post(
        f"/api/v1/nodes/{node_id}/heartbeat/", body or {"cache_tokens_left": 1000}, format="json"
    )


@pytest.fixture
def node_client():
    """``node_client(token)``: an API client authenticated by a node token."""
    return _node_client


@pytest.fixture
def registration():
    """``registration(**overrides)``: a valid registration payload (smollm2 blocks 0:10)."""
    return _registration


@pytest.fixture
def register(db, smollm2):
    """``register(token, **overrides)``: POST a registration; returns the response."""
    return _register


@pytest.fixture
def heartbeat(db):
    """``heartbeat(token, node_id, **body)``: POST a heartbeat; returns the response."""
    return _heartbeat
