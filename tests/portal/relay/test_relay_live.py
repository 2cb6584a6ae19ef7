"""The portal's relay with real processes: daphne, a node behind it, a client via the tracker (spec §9, §10)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from portal.processes import create_user_with_node_token, live_portal
from swarmnode.client.remote import RemoteSpan
from swarmnode.discovery.tracker import fetch_spans
from swarmnode.launcher import start_node
from swarmnode.protocol import CloseSession, OpenSession, Step, tensor_from_numpy
from swarmnode.testing.polling import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("relay-live")
    with live_portal(folder, f"layerswarm_relay_{os.getpid()}", celery=False) as portal:
        portal.folder = folder
        yield portal


def _step(span: RemoteSpan, sid: str) -> np.ndarray:
    x = tensor_from_numpy(np.random.default_rng(1).standard_normal((1, 4, 576)).astype(np.float32))
    span.request(OpenSession(session_id=sid, max_length=16))
    out = span.request(Step(session_id=sid, position=0, hidden=x)).hidden.to_numpy()
    span.request(CloseSession(session_id=sid))
    return out


def test_it_serves_a_relayed_node_through_the_portal_and_checks_reachability(portal):
    """§9.3: a reachable node stays direct; with --relay always it is announced at the portal's relay and
    a client that found it through the tracker gets the same activations, encrypted end to end."""
    token = create_user_with_node_token(portal.env, "homelab", "homelab-password-1")
    model = "smollm2"  # two blocks per node: quick to load, and a model the tracker knows
    args = ["--backend", "torch", "--no-measure", "--portal", portal.url, "--token", token]
    logs = portal.folder
    relayed = start_node(model, "0:2", extra_args=[*args, "--relay", "always"], log_path=logs / "relayed.log")
    direct = start_node(model, "2:4", extra_args=args, log_path=logs / "direct.log")  # --relay auto
    try:
        wait_until(lambda: len(fetch_spans(portal.url, model)) == 2, 60, "both nodes on the tracker")
        spans = {s.start_block: s for s in fetch_spans(portal.url, model)}
        assert spans[0].relay and spans[0].url == relayed.address
        assert spans[0].url.startswith(portal.url.replace("http://", "ws://") + "/ws/relay/")
        assert not spans[2].relay and spans[2].url == direct.url  # the portal dialled it back: reachable
        through = RemoteSpan(spans[0].url, timeout=30, public_key=spans[0].public_key)
        plain = RemoteSpan(relayed.url, timeout=30)
        try:
            assert through.secure
            np.testing.assert_array_equal(_step(through, "via-portal"), _step(plain, "direct"))
        finally:
            through.close()
            plain.close()
    finally:
        for node in (relayed, direct):
            node.stop()
