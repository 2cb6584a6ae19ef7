"""The health map tells direct nodes from relayed ones (behind NAT), in a real browser."""

import os

import pytest

from portal.processes import create_user_with_node_token, live_portal
from swarmnode.server.announce import post_json, prove_key
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import key_id

pytestmark = pytest.mark.slow


def _announce(portal_url: str, token: str, start: int, end: int, url: str, relay: bool, key: NodeIdentity) -> None:
    body = dict(
        model="smollm2", start_block=start, end_block=end, url=url, relay=relay, backend="torch", device="cpu",
        dtype="float32", version="0.1.0", public_key=key.public_key, key_proof=prove_key(portal_url, token, key),
    )  # fmt: skip
    node = post_json(f"{portal_url}/api/v1/nodes/register/", token, body, 10)
    post_json(f"{portal_url}/api/v1/nodes/{node['id']}/heartbeat/", token, {}, 10)


def test_it_draws_relayed_nodes_apart_from_direct_ones(tmp_path, browser):
    with live_portal(tmp_path, f"layerswarm_relaymap_{os.getpid()}", celery=False) as portal:
        token = create_user_with_node_token(portal.env, "homelab", "homelab-password-1")
        behind_nat = NodeIdentity.generate()
        relay_address = f"{portal.url.replace('http', 'ws')}/ws/relay/{key_id(behind_nat.public_key)}"
        _announce(portal.url, token, 0, 15, "ws://127.0.0.1:9/layerswarm/v1", False, NodeIdentity.generate())
        _announce(portal.url, token, 15, 30, relay_address, True, behind_nat)
        page = browser.new_page()
        page.goto(f"{portal.url}/swarm/smollm2/")
        page.wait_for_selector('.lane[data-connection="relay"]', timeout=20_000)
        assert "⇄ relayed" in page.inner_text('.lane[data-connection="relay"]')
        assert "direct" in page.inner_text('.lane[data-connection="direct"]')
        dashed = "getComputedStyle(document.querySelector(sel)).borderTopStyle"
        assert page.evaluate(f"sel => {dashed}", '.lane[data-connection="relay"]') == "dashed"
        assert page.evaluate(f"sel => {dashed}", '.lane[data-connection="direct"]') == "solid"
        assert "1 relayed" in page.inner_text(".model-health h2 small")
        page.close()
