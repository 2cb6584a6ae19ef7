"""The portal publishes the swarm's trusted model publishers at ``/api/v1/publishers/`` (issue #19)."""

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.test import Client

from swarmnode.server.config import NodeConfig
from swarmnode.server.weights import trusted_publishers
from swarmnode.store import TrustedPublishers
from swarmnode.store.manifest import key_id, parse_publisher_key, publisher_key_text


def _key() -> str:
    return publisher_key_text(Ed25519PrivateKey.generate().public_key().public_bytes_raw())


def test_it_lists_the_trusted_keys_in_order_once_each(db, settings):
    first, second = _key(), _key()
    settings.SWARM_TRUSTED_PUBLISHERS = [first, second, first]
    answer = Client().get("/api/v1/publishers/")
    assert answer.status_code == 200 and answer["Content-Type"] == "application/json"
    publishers = answer.json()["publishers"]
    assert [p["key"] for p in publishers] == [first, second]
    assert publishers[0]["key_id"] == key_id(parse_publisher_key(first))
    assert len(TrustedPublishers(p["key"] for p in publishers)) == 2  # what a node adds to its trust list


def test_it_leaves_out_malformed_keys(db, settings):
    good = _key()
    settings.SWARM_TRUSTED_PUBLISHERS = ["ed25519:not-a-key", "x25519:" + good.split(":")[1], good, "<script>"]
    assert [p["key"] for p in Client().get("/api/v1/publishers/").json()["publishers"]] == [good]


def test_it_is_read_only(db, settings):
    settings.SWARM_TRUSTED_PUBLISHERS = [_key()]
    assert Client().post("/api/v1/publishers/", {"key": _key()}).status_code == 405
    assert Client().delete("/api/v1/publishers/").status_code == 405


def test_an_empty_list_by_default(db):
    assert Client().get("/api/v1/publishers/").json() == {"publishers": []}


def test_a_node_started_with_the_portal_trusts_its_publishers(live_server, settings, tmp_path, monkeypatch):
    portal_key, own_key, unknown = _key(), _key(), _key()
    settings.SWARM_TRUSTED_PUBLISHERS = [portal_key]
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    trusted = trusted_publishers(NodeConfig(portal=live_server.url, trust_keys=(own_key,)))
    assert parse_publisher_key(portal_key) in trusted and parse_publisher_key(own_key) in trusted
    assert parse_publisher_key(unknown) not in trusted and len(trusted) == 2
