"""Proof that a registering node holds the private half of the identity key it announces.

A node's public key is public (the spans API lists it), so announcing a key proves nothing. Before
registering, a node asks ``POST /api/v1/nodes/key-challenge/`` for a nonce: a Django-signed value naming
the node token it was issued to, valid ``KEY_CHALLENGE_MAX_AGE_S``. It registers with
``key_proof = {"nonce", "signature"}``, the signature being its Ed25519 signature of
``swarmnode.trust.identity.key_proof_message(nonce, public_key)``. A registration whose proof is
missing, stale, issued to another token or signed by another key is refused with 403 ``key_not_proven``.

Only someone holding the private key can make a proof, so the key's owner (``portal.swarm.models.NodeKey``,
the first account that proved it) is the account that runs the node, and usage receipts signed by the
key are paid to that account alone.
"""

from __future__ import annotations

import os

from django.core import signing

from swarmnode.trust.identity import verify_key_proof

KEY_CHALLENGE_MAX_AGE_S = 600
_CHALLENGE_SALT = "layerswarm.node-key-proof"


class KeyProofError(Exception):
    """A registration does not prove that the node holds the key it announces."""


def issue_key_challenge(token_id: int) -> str:
    """A nonce for proving key possession at registration; valid ``KEY_CHALLENGE_MAX_AGE_S`` with this token."""
    return signing.dumps({"t": token_id, "r": os.urandom(12).hex()}, salt=_CHALLENGE_SALT)


def check_key_proof(token_id: int, public_key: str, proof: dict | None) -> None:
    """Check a registering node's proof that it holds ``public_key``.

    Args:
        token_id: the node token the registration came with.
        public_key: the announced ``ed25519:...,x25519:...`` key (canonical form).
        proof: ``{"nonce": ..., "signature": ...}`` from the registration, or None.

    Raises:
        KeyProofError: no proof, a forged or expired nonce, a nonce of another token, a wrong signature.
    """
    if not proof:
        raise KeyProofError(
            "a node announcing a public_key must prove it holds the key: sign a nonce from "
            "/api/v1/nodes/key-challenge/ and send it as key_proof"
        )
    nonce = str(proof.get("nonce", ""))
    try:
        issued = signing.loads(nonce, salt=_CHALLENGE_SALT, max_age=KEY_CHALLENGE_MAX_AGE_S)
    except signing.BadSignature:  # SignatureExpired is one
        raise KeyProofError("the key challenge is forged or expired: ask for a fresh one") from None
    if not isinstance(issued, dict) or issued.get("t") != token_id:
        raise KeyProofError("the key challenge was issued to another node token")
    if not verify_key_proof(public_key, nonce, str(proof.get("signature", ""))):
        raise KeyProofError("the key proof is not a signature of the challenge by the announced key")
