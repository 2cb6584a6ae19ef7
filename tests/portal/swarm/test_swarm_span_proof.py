"""A browser node cannot claim blocks it has not loaded: it registers with a proof computed from its span
file's bytes (ranges chosen by a nonce the tracker signed for its token), checked against the portal's copy."""

import hashlib

import pytest

from portal.swarm import browser_node
from portal.swarm.browser_node import issue_span_challenge, span_proof
from portal.swarm.models import Node, SpanFile


@pytest.fixture
def span_files(smollm2, settings, tmp_path):
    """Prepared span files for blocks 0:10 and 10:20 (random bytes stand in for the ONNX graphs)."""
    settings.SWARM_SPAN_FILES_DIR = tmp_path
    files = {}
    for start, seed in ((0, 1), (10, 2)):
        data = hashlib.sha256(bytes([seed])).digest() * 4000  # 128 kB
        sha = hashlib.sha256(data).hexdigest()
        (tmp_path / f"{sha}.onnx").write_bytes(data)
        files[start] = (
            data,
            SpanFile.objects.create(
                model=smollm2,
                start_block=start,
                end_block=start + 10,
                weights_digest=f"w{start}",
                sha256=sha,
                size=len(data),
                num_kv_heads=3,
                head_dim=64,
                opset=17,
            ),
        )
    return files


def _challenge(node_client, token, sha):
    response = node_client(token).post("/api/v1/nodes/span-challenge/", {"sha256": sha}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["nonce"]


def _proof(data: bytes, nonce: str) -> str:
    return span_proof(nonce, lambda offset, length: data[offset : offset + length], len(data))


def _browser(start=10, **proof):
    return {
        "backend": "onnxruntime-web",
        "url": "",
        "relay": True,
        "start_block": start,
        "end_block": start + 10,
        **({"span_proof": proof} if proof else {}),
    }


def test_it_registers_a_browser_node_that_proves_its_span(owner_token, node_client, register, span_files):
    data, f = span_files[10]
    nonce = _challenge(node_client, owner_token, f.sha256)
    response = register(owner_token, **_browser(sha256=f.sha256, nonce=nonce, proof=_proof(data, nonce)))
    assert response.status_code == 201, response.content
    assert Node.objects.get().backend == "onnxruntime-web"


def test_it_refuses_a_browser_node_without_a_proof(owner_token, register, span_files):
    response = register(owner_token, **_browser())
    assert response.status_code == 403 and response.json()["error"] == "span_not_loaded"
    assert not Node.objects.exists()


def test_it_refuses_blocks_the_proven_file_does_not_hold(owner_token, node_client, register, span_files):
    data, f = span_files[10]
    nonce = _challenge(node_client, owner_token, f.sha256)
    response = register(owner_token, **_browser(start=0, sha256=f.sha256, nonce=nonce, proof=_proof(data, nonce)))
    assert response.status_code == 403 and "blocks 0:10" in response.json()["detail"]


def test_it_refuses_a_proof_made_without_the_bytes(owner_token, node_client, register, span_files):
    data, f = span_files[10]
    other_data, _ = span_files[0]
    nonce = _challenge(node_client, owner_token, f.sha256)
    for proof in (_proof(other_data, nonce), hashlib.sha256(nonce.encode()).hexdigest()):
        response = register(owner_token, **_browser(sha256=f.sha256, nonce=nonce, proof=proof))
        assert response.status_code == 403 and "not loaded" in response.json()["detail"]


def test_it_refuses_another_tokens_or_a_forged_or_stale_nonce(
    owner_token, other_token, node_client, register, span_files, monkeypatch
):
    data, f = span_files[10]
    theirs = _challenge(node_client, other_token, f.sha256)
    forged = issue_span_challenge(1, f.sha256)[:-4] + "AAAA"
    for nonce in (theirs, forged):
        response = register(owner_token, **_browser(sha256=f.sha256, nonce=nonce, proof=_proof(data, nonce)))
        assert response.status_code == 403, nonce
    nonce = _challenge(node_client, owner_token, f.sha256)
    monkeypatch.setattr(browser_node, "CHALLENGE_MAX_AGE_S", -1)
    response = register(owner_token, **_browser(sha256=f.sha256, nonce=nonce, proof=_proof(data, nonce)))
    assert response.status_code == 403 and "expired" in response.json()["detail"]


def test_it_gives_challenges_only_for_prepared_files_and_node_tokens(owner_token, node_client, anon_client, span_files):
    response = node_client(owner_token).post("/api/v1/nodes/span-challenge/", {"sha256": "0" * 64}, format="json")
    assert response.status_code == 404
    response = anon_client.post("/api/v1/nodes/span-challenge/", {"sha256": span_files[10][1].sha256}, format="json")
    assert response.status_code == 401
