"""Clients find online spans through the tracker."""

from portal.swarm.models import Node


def test_it_lists_only_online_usable_spans(owner, owner_token, other_token, register, heartbeat):
    online = register(owner_token, start_block=0, end_block=10).json()["id"]
    heartbeat(owner_token, online)
    register(owner_token, start_block=10, end_block=20, url="ws://h:2/a")  # joining: no heartbeat yet
    banned = register(other_token, start_block=20, end_block=30, url="ws://h:3/a").json()["id"]
    heartbeat(other_token, banned)
    Node.objects.filter(pk=banned).update(banned=True)

    from rest_framework.test import APIClient

    response = APIClient().get("/api/v1/models/smollm2/spans/").json()
    assert response["model"] == "smollm2" and response["num_blocks"] == 30
    assert [s["id"] for s in response["spans"]] == [online]
    span = response["spans"][0]
    assert span["url"] == "ws://127.0.0.1:40001/layerswarm/v1"
    assert {"start_block", "end_block", "hidden_size", "dtype", "cache_tokens_left", "max_session_length"} <= set(span)


def test_it_hides_nodes_of_banned_users(owner, owner_token, register, heartbeat, anon_client):
    heartbeat(owner_token, register(owner_token).json()["id"])
    owner.is_active = False
    owner.save()
    assert anon_client.get("/api/v1/models/smollm2/spans/").json()["spans"] == []


def test_it_answers_404_for_an_unknown_model(anon_client, smollm2):
    assert anon_client.get("/api/v1/models/nope/spans/").status_code == 404


def test_it_counts_online_nodes_per_model(owner_token, register, heartbeat, anon_client):
    heartbeat(owner_token, register(owner_token).json()["id"])
    models = anon_client.get("/api/v1/models/").json()
    assert models == [
        {
            "name": "smollm2",
            "kind": "chat",
            "chat": True,
            "architecture": "llama",
            "num_blocks": 30,
            "hidden_size": 576,
            "size_bytes": 538090408,
            "source_kind": "wheel",
            "description": "SmolLM2-135M-Instruct (Llama, 30 blocks)",
            "online_nodes": 1,
        }
    ]


def test_it_serves_an_openapi_schema_with_the_tracker(anon_client):
    schema = anon_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert "/api/v1/nodes/register/" in schema["paths"]
    assert "/api/v1/models/{model}/spans/" in schema["paths"]
    assert anon_client.get("/api/docs/").status_code == 200
