"""Reputation API: evidence is checked (signatures, consistency, the disagreement itself) before it counts."""

from __future__ import annotations

import numpy as np
import pytest

from portal.reputation import scoring
from portal.reputation.models import AuditEvidence, NodeStanding
from swarmnode.protocol import tensor_from_numpy
from swarmnode.protocol.signing import encode_signature, result_digest, tail_of
from swarmnode.trust.attestation import SignedResult
from swarmnode.trust.identity import NodeIdentity

H = 8


def _sign(identity: NodeIdentity, kind, session_id, position, blocks, inputs, out) -> dict:
    """What a node signs (spec §11.1), as the client forwards it."""
    digest = result_digest(kind, session_id, position, blocks[0], blocks[1], inputs, out)
    return SignedResult(digest, encode_signature(identity.sign(digest.to_bytes())), tail_of(out)).to_json()


@pytest.fixture
def keys(node, other_node):
    """Identities for the audited node and the auditor, announced as their public keys."""
    ids = NodeIdentity.generate(), NodeIdentity.generate()
    node.public_key, other_node.public_key = ids[0].public_key, ids[1].public_key
    node.save(), other_node.save()
    return ids


def _report(keys, node, auditor, *, noise=0.0, passed=None, position=5, **changes) -> dict:
    rng = np.random.default_rng(0)
    history = rng.normal(size=(1, position + 1, H)).astype(np.float32)  # every input the hop saw
    full = rng.normal(size=(1, position + 1, H)).astype(np.float32)  # the honest output of all positions
    step_out = full[:, -1:, :] + noise * rng.normal(size=(1, 1, H)).astype(np.float32)
    claim = _sign(
        keys[0],
        "step",
        "s1",
        position,
        (node.start_block, node.end_block),
        tensor_from_numpy(history[:, -1:, :]),
        tensor_from_numpy(step_out),
    )
    reference = _sign(
        keys[1],
        "forward",
        "",
        0,
        (auditor.start_block, auditor.end_block),
        tensor_from_numpy(history),
        tensor_from_numpy(full),
    )
    body = {
        "node": node.pk,
        "auditor": auditor.pk,
        "passed": noise == 0.0 if passed is None else passed,
        "session_id": "s1",
        "position": position,
        "claim": claim,
        "reference": reference,
    }
    body.update(changes)
    return body


URL = "/api/v1/reputation/evidence/"


def test_it_scores_a_checked_failed_audit_and_drops_the_node_under_the_threshold(
    keys, node, other_node, other_client, settings
):
    response = other_client.post(URL, _report(keys, node, other_node, noise=1.0), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["passed"] is False
    evidence = AuditEvidence.objects.get(node=node)
    assert evidence.signatures_verified and evidence.auditor == other_node
    assert evidence.relative_error > evidence.tolerance
    assert scoring.node_score(node) < settings.REPUTATION_THRESHOLD


def test_it_scores_a_checked_passed_audit(keys, node, other_node, other_client, settings):
    response = other_client.post(URL, _report(keys, node, other_node), format="json")
    assert response.status_code == 201 and response.json()["passed"] is True
    assert scoring.node_score(node) > settings.REPUTATION_PRIOR


def test_it_uses_its_own_verdict_not_the_clients(keys, node, other_node, other_client):
    response = other_client.post(URL, _report(keys, node, other_node, passed=False), format="json")
    assert response.status_code == 201 and response.json()["passed"] is True  # the outputs agree


def test_it_refuses_a_claim_the_node_did_not_sign(keys, node, other_node, other_client):
    body = _report(keys, node, other_node, noise=1.0)
    body["claim"]["digest"]["output_sha256"] = "0" * 64  # the client changed what the node attested
    response = other_client.post(URL, body, format="json")
    assert response.status_code == 400 and response.json()["error"] == "bad_signature"
    forged = _report((NodeIdentity.generate(), keys[1]), node, other_node, noise=1.0)  # signed by someone else
    assert other_client.post(URL, forged, format="json").json()["error"] == "bad_signature"
    assert not AuditEvidence.objects.exists()


def test_it_refuses_a_tail_that_does_not_match_the_signed_digest(keys, node, other_node, other_client):
    body = _report(keys, node, other_node, noise=1.0)
    body["claim"]["tail"] = _report(keys, node, other_node)["claim"]["tail"]
    assert other_client.post(URL, body, format="json").json()["error"] == "bad_signature"


def test_it_refuses_a_reference_of_another_length_or_blocks(keys, node, other_node, other_client, make_node, other):
    body = _report(keys, node, other_node, noise=1.0, position=4)
    body["position"] = body["claim"]["digest"]["position"]
    short = _report(keys, node, other_node, noise=1.0, position=3)
    body["reference"] = short["reference"]  # replays fewer positions than the claim covers
    response = other_client.post(URL, body, format="json")
    assert response.status_code == 400 and response.json()["error"] == "bad_evidence"


def test_it_counts_each_signed_result_once(keys, node, other_node, other_client):
    body = _report(keys, node, other_node, noise=1.0)
    assert other_client.post(URL, body, format="json").status_code == 201
    again = other_client.post(URL, body, format="json")
    assert again.status_code == 409 and again.json()["error"] == "duplicate"
    assert AuditEvidence.objects.count() == 1


def test_it_needs_an_auditor_of_another_owner(keys, node, owner, owner_client, make_node):
    mine = make_node(owner, port=41005)
    mine.public_key = keys[1].public_key
    mine.save()
    response = owner_client.post(URL, _report(keys, node, mine, noise=1.0), format="json")
    assert response.status_code == 400 and response.json()["error"] == "not_independent"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"node": "x"},
        {"node": 1, "auditor": 2, "passed": True, "session_id": "s", "position": 0, "claim": "no", "reference": {}},
    ],
)
def test_it_answers_malformed_reports_with_400(body, other_client, node):
    assert other_client.post(URL, body, format="json").status_code == 400


def test_it_answers_malformed_signed_results_with_400(keys, node, other_node, other_client):
    body = _report(keys, node, other_node, noise=1.0)
    body["claim"]["tail"]["data"] = "!!!"
    assert other_client.post(URL, body, format="json").json()["error"] == "bad_evidence"
    body = _report(keys, node, other_node, noise=1.0)
    body["reference"]["signature"] = "abc"
    assert other_client.post(URL, body, format="json").json()["error"] == "bad_evidence"


def test_it_records_step_reports_and_speed_honesty(node, other, other_client, dealt):
    dealt(other, node)
    response = other_client.post(
        "/api/v1/reputation/steps/", {"node": node.pk, "ok": 100, "failed": 0, "measured_throughput": 19.0}, "json"
    )
    assert response.status_code == 200 and response.json()["score"] > 0.5
    assert (
        other_client.post("/api/v1/reputation/steps/", {"node": node.pk, "ok": -1, "failed": 0}, "json").status_code
        == 400
    )
    assert (
        other_client.post("/api/v1/reputation/steps/", {"node": 99999, "ok": 1, "failed": 0}, "json").status_code == 404
    )


def test_it_takes_one_user_report_per_day(node, other, other_client, dealt):
    dealt(other, node)
    url = f"/api/v1/reputation/nodes/{node.pk}/report/"
    assert other_client.post(url, {"reason": "it answered gibberish"}, format="json").status_code == 201
    assert other_client.post(url, {"reason": "again"}, format="json").status_code == 200
    assert NodeStanding.objects.get(node=node).signals["reports"][1] > 0
