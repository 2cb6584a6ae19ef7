"""#18: the portal publishes DHT bootstrap addresses (API, Contribute page) and its health map counts DHT nodes."""

from __future__ import annotations

import html
import json
import re

import pytest
from rest_framework.test import APIClient

from portal.swarm.dht_reader import BOOTSTRAP_FILE
from portal.swarm.health import model_health

pytestmark = pytest.mark.django_db

OTHER = "/ip4/198.51.100.7/tcp/31337/p2p/12D3KooWGyyTE9Pr9QioMu6dwR855G76phcw4EQwYBA9XPXFiG8a"
OWN = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWP2YJM3qJczNZb5Z76zojcUTw2mDb6oE3XFPY4dj5yQZ7"


@pytest.fixture
def published(settings, tmp_path):
    settings.SWARM_DHT_BOOTSTRAP = [OTHER]
    settings.VAR_DIR = tmp_path
    (tmp_path / BOOTSTRAP_FILE).write_text(json.dumps({"addrs": [OWN, OTHER]}))  # run_dht_bootstrap's own peer


def test_the_api_publishes_the_configured_and_the_portals_own_bootstrap_peers(published):
    reply = APIClient().get("/api/v1/swarm/bootstrap/")
    assert reply.status_code == 200 and reply.json() == {"bootstrap": [OTHER, OWN]}


def test_without_bootstrap_peers_the_list_is_empty(settings, tmp_path):
    settings.SWARM_DHT_BOOTSTRAP, settings.VAR_DIR = [], tmp_path
    assert APIClient().get("/api/v1/swarm/bootstrap/").json() == {"bootstrap": []}


def test_a_garbled_bootstrap_file_is_ignored(settings, tmp_path):
    settings.SWARM_DHT_BOOTSTRAP, settings.VAR_DIR = [OTHER], tmp_path
    (tmp_path / BOOTSTRAP_FILE).write_text('{"addrs": [1, {"x": 2}]')
    assert APIClient().get("/api/v1/swarm/bootstrap/").json() == {"bootstrap": [OTHER]}


def test_the_contribute_page_gives_the_dht_addresses_for_the_node_config(published, owner, client, smollm2):
    client.force_login(owner)
    page = client.get("/contribute/").content.decode()
    [pre] = re.findall(r'<pre class="cmd" data-step="dht">(.*?)</pre>', page, re.S)
    assert html.unescape(pre).split(",") == [OTHER, OWN]
    assert f'dht = ["{OTHER}", "{OWN}"]' in html.unescape(page)


def test_the_contribute_page_says_nothing_of_the_dht_without_peers(settings, tmp_path, owner, client, smollm2):
    settings.SWARM_DHT_BOOTSTRAP, settings.VAR_DIR = [], tmp_path
    client.force_login(owner)
    assert 'id="dht-bootstrap"' not in client.get("/contribute/").content.decode()


def test_nodes_only_the_dht_lists_cover_blocks_on_the_health_map(smollm2):
    entry = {"start_block": 0, "end_block": 30, "url": "ws://203.0.113.9:7000/layerswarm/v1", "connection": "dht"}
    assert model_health(smollm2, [])["covered"] is False
    health = model_health(smollm2, [], [entry])
    assert health["covered"] is True and health["online_nodes"] == 1 and health["nodes"] == [entry]
