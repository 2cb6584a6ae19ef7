"""The tracker keeps what a node says of its weights (issue #19, swarmnode spec §4.10): the manifest it claims
and the digest of the blocks it loaded, listed with its span so that joiners and clients can check them."""

from rest_framework.test import APIClient

from swarmnode.discovery import ANNOUNCED_FIELDS, PeerInfo

MANIFEST, DIGEST = "ab" * 32, "cd" * 32


def test_it_lists_the_announced_manifest_and_span_digest(owner_token, register, heartbeat):
    node = register(owner_token, manifest=MANIFEST, span_digest=DIGEST)
    assert node.status_code == 201, node.content
    heartbeat(owner_token, node.json()["id"])
    span = APIClient().get("/api/v1/models/smollm2/spans/").json()["spans"][0]
    assert (span["manifest"], span["span_digest"]) == (MANIFEST, DIGEST)
    peer = PeerInfo.from_tracker(span)  # what a client or a joining node reads
    assert (peer.manifest, peer.span_digest) == (MANIFEST, DIGEST)
    assert {"manifest", "span_digest"} <= set(ANNOUNCED_FIELDS)


def test_a_node_without_them_registers_as_before(owner_token, register, heartbeat):
    heartbeat(owner_token, register(owner_token).json()["id"])
    span = APIClient().get("/api/v1/models/smollm2/spans/").json()["spans"][0]
    assert (span["manifest"], span["span_digest"]) == ("", "")


def test_it_refuses_what_is_not_a_sha256(owner_token, register):
    for bad in ("AB" * 32, "ab" * 31, "ab" * 33, "../" * 8, "x" * 64):
        answer = register(owner_token, span_digest=bad)
        assert answer.status_code == 400 and "span_digest" in answer.json(), bad
    assert register(owner_token, manifest=["ab" * 32]).status_code == 400
