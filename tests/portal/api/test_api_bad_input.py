"""Bad registrations and heartbeats get a clear 4xx and leave nothing half-written."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.accounts.models import NodeToken
from portal.swarm.models import Heartbeat, Node


@pytest.fixture
def nothing_written(db):
    """Asserts after the test that no node and no heartbeat exist."""
    yield
    assert Node.objects.count() == 0
    assert Heartbeat.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"model": "smollm2", "start_block": NaN}',
        b"\xff\xfe garbage",
    ],
    ids=["broken", "array", "string", "nan", "not-utf8"],
)
def test_it_rejects_malformed_json(owner_token, node_client, smollm2, nothing_written, body):
    response = node_client(owner_token).post("/api/v1/nodes/register/", body, content_type="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"start_block": -1}, "start_block"),
        ({"start_block": "zero"}, "start_block"),
        ({"end_block": 0}, "end_block"),
        ({"start_block": 5, "end_block": 5}, "end_block"),
        ({"start_block": 7, "end_block": 3}, "end_block"),
        ({"url": "http://127.0.0.1:1/x"}, "url"),
        ({"url": "ws://no-port/layerswarm/v1"}, "url"),
        ({"url": ""}, "url"),
        ({"url": "ws://127.0.0.1:1/x", "relay": True}, "url"),
        ({"dtype": "float64"}, "dtype"),
        ({"throughput": -1}, "throughput"),
        ({"throughput": "nan"}, "throughput"),
        ({"throughput": "inf"}, "throughput"),
        ({"cache_tokens_left": 2**40}, "cache_tokens_left"),
        ({"backend": "x" * 33}, "backend"),
        ({"public_key": "k" * 513}, "public_key"),
        ({"model": "../etc/passwd"}, "model"),
        ({"version": None}, "version"),
    ],
)
def test_it_rejects_invalid_fields(owner_token, register, nothing_written, overrides, field):
    response = register(owner_token, **overrides)
    assert response.status_code == 400
    assert field in response.json()


def test_it_rejects_missing_fields(owner_token, node_client, smollm2, nothing_written):
    response = node_client(owner_token).post("/api/v1/nodes/register/", {"model": "smollm2"}, format="json")
    assert response.status_code == 400
    assert {"start_block", "end_block", "backend", "device", "dtype", "version"} <= set(response.json())


def test_it_refuses_oversized_payloads_with_413(owner_token, register, nothing_written):
    response = register(owner_token, padding="x" * 20_000)
    assert response.status_code == 413


def test_it_refuses_a_span_outside_the_model(owner_token, register, nothing_written):
    response = register(owner_token, start_block=25, end_block=31)
    assert response.status_code == 400
    assert response.json()["error"] == "span_outside_model"
    assert "0:30" in response.json()["detail"]


def test_it_refuses_an_unknown_model(owner_token, register, nothing_written):
    response = register(owner_token, model="gpt-17")
    assert response.status_code == 400
    assert response.json()["error"] == "unknown_model"


def test_it_refuses_overlapping_nodes_from_one_token(owner_token, register):
    first = register(owner_token, start_block=0, end_block=10)
    assert first.status_code == 201
    for start, end, port in [(5, 15, 2), (0, 10, 3), (9, 10, 4), (0, 30, 5)]:
        response = register(
            owner_token, start_block=start, end_block=end, url=f"ws://127.0.0.1:4000{port}/layerswarm/v1"
        )
        assert response.status_code == 409, (start, end)
        assert response.json()["error"] == "overlapping_span"
    assert Node.objects.count() == 1


def test_it_lets_different_owners_serve_the_same_blocks(owner_token, other_token, register):
    assert register(owner_token).status_code == 201
    assert register(other_token, url="ws://127.0.0.1:40009/layerswarm/v1").status_code == 201


def test_it_refuses_a_url_registered_by_another_account(owner_token, other_token, register):
    assert register(owner_token).status_code == 201
    response = register(other_token, start_block=10, end_block=20)  # same URL as alice's node
    assert response.status_code == 409
    assert response.json()["error"] == "url_taken"
    assert Node.objects.count() == 1


def test_it_caps_the_nodes_of_one_token(owner_token, register, settings):
    settings.SWARM_MAX_NODES_PER_TOKEN = 2
    assert register(owner_token, start_block=0, end_block=1, url="ws://h:1/a").status_code == 201
    assert register(owner_token, start_block=1, end_block=2, url="ws://h:2/a").status_code == 201
    response = register(owner_token, start_block=2, end_block=3, url="ws://h:3/a")
    assert response.status_code == 409 and response.json()["error"] == "too_many_nodes"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer lsn_deadbeef_forgedforgedforgedforgedforgedforgedforg",
        "Bearer lsn_",
        "Bearer " + "lsn_" + "x" * 5000,
        "Token lsn_whatever",
        "Bearer",
        "",
    ],
    ids=["forged", "empty", "huge", "wrong-scheme", "no-secret", "none"],
)
def test_it_refuses_forged_or_missing_tokens(smollm2, registration, nothing_written, header):
    from rest_framework.test import APIClient

    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post("/api/v1/nodes/register/", registration(), format="json")
    assert response.status_code == 401


def test_it_refuses_expired_tokens(owner, register, nothing_written):
    _, plain = NodeToken.create_for(owner, "old", expires_at=timezone.now() - timedelta(seconds=1))
    assert register(plain).status_code == 401


def test_it_refuses_revoked_tokens_and_their_heartbeats(owner, owner_token, register, heartbeat):
    node_id = register(owner_token).json()["id"]
    NodeToken.objects.get(user=owner).revoke()
    assert heartbeat(owner_token, node_id).status_code == 401
    assert register(owner_token, start_block=10, end_block=20, url="ws://h:9/a").status_code == 401
    assert Heartbeat.objects.count() == 0


def test_it_refuses_tokens_of_banned_users(owner, owner_token, register, nothing_written):
    owner.is_active = False
    owner.save()
    assert register(owner_token).status_code == 401


def test_it_refuses_an_api_key_where_a_node_token_is_needed(owner_api_key, register, nothing_written):
    assert register(owner_api_key).status_code == 401


def test_it_rejects_bad_heartbeats_without_writing(owner_token, register, heartbeat):
    node_id = register(owner_token).json()["id"]
    for body in [{"cache_tokens_left": -5}, {"throughput": "inf"}, {"open_sessions": "many"}]:
        assert heartbeat(owner_token, node_id, **body).status_code == 400
    assert Heartbeat.objects.count() == 0
    assert Node.objects.get(pk=node_id).state == "joining"


def test_it_refuses_heartbeats_of_banned_nodes(owner_token, register, heartbeat):
    node_id = register(owner_token).json()["id"]
    Node.objects.filter(pk=node_id).update(banned=True)
    response = heartbeat(owner_token, node_id)
    assert response.status_code == 403
    assert Heartbeat.objects.count() == 0
