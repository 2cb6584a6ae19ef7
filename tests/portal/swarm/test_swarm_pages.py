"""Pages: home, "Contribute a GPU" (node tokens + commands + your nodes), the health map."""

import html

from django.test import Client

from portal.accounts.models import NodeToken


def test_it_creates_a_node_token_and_shows_the_commands(owner, owner_client, smollm2):
    page = html.unescape(owner_client.post("/contribute/", {"name": "garage GPU"}).content.decode())
    token = NodeToken.objects.get(user=owner)
    plain = page.split('id="node-token">')[1].split("<")[0]
    assert NodeToken.authenticate(plain) == token and token.name == "garage GPU"
    assert "pip install" in page
    assert f'token = "{plain}"' in page and 'portal = "http://testserver"' in page
    assert f"--token {plain}" not in page  # never on a command line (contribute page test: test_swarm_contribute.py)
    assert plain not in owner_client.get("/contribute/").content.decode()  # shown once


def test_it_lists_the_users_nodes_with_their_state(owner_token, register, heartbeat, owner_client, other_client):
    heartbeat(owner_token, register(owner_token).json()["id"])
    assert "online" in owner_client.get("/contribute/").content.decode()
    assert "0:10" not in other_client.get("/contribute/").content.decode()


def test_it_requires_log_in_to_contribute(db):
    response = Client().get("/contribute/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_it_revokes_only_the_users_own_node_tokens(owner, other, owner_token, other_client, owner_client):
    token = NodeToken.objects.get(user=owner)
    url = f"/contribute/tokens/{token.pk}/revoke/"
    assert Client().post(url).status_code == 302
    assert other_client.post(url).status_code == 404
    assert NodeToken.authenticate(owner_token) is not None
    assert owner_client.post(url).status_code == 302
    assert NodeToken.authenticate(owner_token) is None


def test_it_draws_the_health_map_for_everyone(owner_token, register, heartbeat, owner_client):
    heartbeat(owner_token, register(owner_token).json()["id"])
    for client in (owner_client, Client()):
        page = client.get("/swarm/smollm2/").content.decode()
        assert 'id="health-map"' in page and "health_map.js" in page
        assert "broken: blocks 10-29 uncovered" in page  # in the embedded JSON and the <noscript> fallback
    assert Client().get("/swarm/nope/").status_code == 404


def test_it_shows_the_swarm_on_the_home_page(smollm2):
    page = Client().get("/").content.decode()
    assert "smollm2" in page and "broken: blocks 0-29 uncovered" in page


def test_it_serves_the_frontend_files(db):
    for name in ("health_map.js", "my_nodes.js", "dom.js", "portal.css"):
        assert Client().get(f"/static/{name}").status_code == 200
