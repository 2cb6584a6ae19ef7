"""Every API endpoint's permission rules: owner, other user, anonymous (and the wrong kind of secret)."""

import pytest
from rest_framework.test import APIClient

from portal.accounts.models import NodeToken
from portal.swarm.models import Heartbeat, Node


@pytest.fixture
def node_id(owner_token, register, heartbeat) -> int:
    """An online node of the owner."""
    node_id = register(owner_token).json()["id"]
    heartbeat(owner_token, node_id)
    return node_id


# -- machine endpoints: only the node token that registered the node ----------------------------------------


@pytest.mark.parametrize("action", ["heartbeat", "leave"])
def test_it_lets_only_the_registering_token_update_its_node(
    action, node_id, owner, owner_token, other_token, node_client, owner_client, anon_client, owner_api_key
):
    url = f"/api/v1/nodes/{node_id}/{action}/"
    before = (Heartbeat.objects.count(), Node.objects.get(pk=node_id).state)
    second_machine = NodeToken.create_for(owner, "alice's other GPU")[1]
    assert node_client(other_token).post(url, {}, format="json").status_code == 404  # other user's token
    assert node_client(second_machine).post(url, {}, format="json").status_code == 404  # same user, other machine
    assert node_client(owner_api_key).post(url, {}, format="json").status_code == 401  # an API key is not a node
    assert owner_client.post(url, {}, format="json").status_code == 401  # a browser session is not a node
    assert anon_client.post(url, {}, format="json").status_code == 401
    assert (Heartbeat.objects.count(), Node.objects.get(pk=node_id).state) == before
    assert node_client(owner_token).post(url, {}, format="json").status_code == 200


def test_it_lets_only_node_tokens_register(
    smollm2, registration, owner_client, anon_client, owner_api_key, node_client
):
    assert owner_client.post("/api/v1/nodes/register/", registration(), format="json").status_code == 401
    assert anon_client.post("/api/v1/nodes/register/", registration(), format="json").status_code == 401
    assert node_client(owner_api_key).post("/api/v1/nodes/register/", registration(), format="json").status_code == 401
    assert Node.objects.count() == 0


def test_it_never_moves_a_node_to_another_owner(node_id, other_token, register, owner):
    # Bob re-registering Alice's exact span and URL is refused and Alice's node stays hers.
    response = register(other_token)
    assert response.status_code == 409
    assert Node.objects.get(pk=node_id).owner == owner
    assert Node.objects.count() == 1


# -- the owner's view of their nodes (session or API key) -----------------------------------------------------


def test_it_lists_only_the_users_own_nodes(node_id, owner_client, other_client, anon_client, owner_api_key):
    assert [n["id"] for n in owner_client.get("/api/v1/nodes/").json()] == [node_id]
    assert other_client.get("/api/v1/nodes/").json() == []
    assert anon_client.get("/api/v1/nodes/").status_code == 401
    with_key = APIClient()
    with_key.credentials(HTTP_AUTHORIZATION=f"Bearer {owner_api_key}")
    assert [n["id"] for n in with_key.get("/api/v1/nodes/").json()] == [node_id]


def test_it_shows_a_node_only_to_its_owner(node_id, owner_client, other_client, anon_client):
    url = f"/api/v1/nodes/{node_id}/"
    response = owner_client.get(url)
    assert response.status_code == 200 and response.json()["state"] == "online"
    assert other_client.get(url).status_code == 404
    assert anon_client.get(url).status_code == 401


def test_it_refuses_a_forged_api_key(node_id):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer lsk_00000000_forged")
    assert client.get("/api/v1/nodes/").status_code == 401


# -- public tracker endpoints: the same for everyone ------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["/api/v1/models/", "/api/v1/models/smollm2/spans/", "/api/v1/swarm/health/", "/api/schema/"]
)
def test_it_serves_public_endpoints_to_everyone(url, node_id, owner_client, other_client, anon_client):
    bodies = [c.get(url) for c in (owner_client, other_client, anon_client)]
    assert [r.status_code for r in bodies] == [200, 200, 200]
    assert bodies[0].content == bodies[1].content == bodies[2].content


def test_it_ignores_bad_credentials_on_public_endpoints(node_id):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer lsk_forged")
    assert client.get("/api/v1/models/smollm2/spans/").status_code == 200


def test_it_refuses_writes_to_public_endpoints(node_id, owner_client, anon_client):
    for client in (owner_client, anon_client):
        assert client.post("/api/v1/models/", {}, format="json").status_code == 405
        assert client.delete("/api/v1/models/smollm2/spans/").status_code == 405
