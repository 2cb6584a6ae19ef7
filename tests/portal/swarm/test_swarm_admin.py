"""The admin: nodes filtered by state/model/owner, ban/unban nodes and users, heartbeat history."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from portal.swarm.models import Node


@pytest.fixture
def admin_client(db) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "root-password-1"))
    return client


@pytest.fixture
def node_id(owner_token, register, heartbeat, settings) -> int:
    settings.SWARM_HEARTBEAT_HISTORY_EVERY = 0  # keep every heartbeat in the history
    node_id = register(owner_token).json()["id"]
    heartbeat(owner_token, node_id)
    heartbeat(owner_token, node_id, cache_tokens_left=777)
    return node_id


def test_it_filters_nodes(admin_client, node_id, owner, smollm2):
    for query in (
        "state__exact=online",
        f"model__id__exact={smollm2.pk}",
        f"owner__id__exact={owner.pk}",
        "banned__exact=0",
    ):
        page = admin_client.get(f"/admin/swarm/node/?{query}")
        assert page.status_code == 200 and f"/admin/swarm/node/{node_id}/change/" in page.content.decode()
    assert (
        f"/admin/swarm/node/{node_id}/change/"
        not in admin_client.get("/admin/swarm/node/?state__exact=offline").content.decode()
    )


def test_it_shows_heartbeat_history(admin_client, node_id):
    page = admin_client.get(f"/admin/swarm/node/{node_id}/change/").content.decode()
    assert "777" in page


def test_it_bans_and_unbans_a_node(admin_client, node_id, heartbeat, owner_token):
    admin_client.post("/admin/swarm/node/", {"action": "ban", "_selected_action": [node_id]})
    node = Node.objects.get(pk=node_id)
    assert node.banned and node.state == "offline"
    assert heartbeat(owner_token, node_id).status_code == 403
    admin_client.post("/admin/swarm/node/", {"action": "unban", "_selected_action": [node_id]})
    assert not Node.objects.get(pk=node_id).banned


def test_it_bans_a_user_and_their_nodes_leave_the_swarm(
    admin_client, node_id, owner, anon_client, owner_token, register
):
    admin_client.post("/admin/auth/user/", {"action": "ban", "_selected_action": [owner.pk]})
    owner.refresh_from_db()
    assert not owner.is_active
    assert anon_client.get("/api/v1/models/smollm2/spans/").json()["spans"] == []
    assert register(owner_token).status_code == 401
    admin_client.post("/admin/auth/user/", {"action": "unban", "_selected_action": [owner.pk]})
    owner.refresh_from_db()
    assert owner.is_active


def test_it_keeps_admin_for_staff_only(owner_client, anon_client):
    assert owner_client.get("/admin/swarm/node/").status_code == 302
    assert anon_client.get("/admin/swarm/node/").status_code == 302
