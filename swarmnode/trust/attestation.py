"""Signed results as evidence: what a node attested about one output, checkable by anyone (spec §11).

Used by the client (checking every result, building evidence) and by the portal (checking evidence
reports); imports only the protocol and the identity module, so neither torch nor Django.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from swarmnode.protocol import ProtocolError, WireTensor, tensor_from_wire
from swarmnode.protocol.signing import ResultDigest, decode_signature, result_digest, sha256_hex, tail_of
from swarmnode.trust.identity import parse_public_key, verify_signature

__all__ = ["SignedResult", "signed_result"]


@dataclass
class SignedResult:
    """One result as a node attested it: the digest, the signature, and the output's last position."""

    digest: ResultDigest
    signature: str  # base64url Ed25519 signature of ``digest.to_bytes()``
    tail: WireTensor  # (B, 1, H): the output's last position; its SHA-256 is in the digest

    def verify(self, public_key: str) -> bool:
        """True when ``signature`` is the announced key's signature of the digest and the tail matches it."""
        if sha256_hex(self.tail.data) != self.digest.tail_sha256 or self.tail.dtype != self.digest.dtype:
            return False
        try:
            keys = parse_public_key(public_key)
        except ValueError:
            return False
        return verify_signature(keys, decode_signature(self.signature), self.digest.to_bytes())

    def to_json(self) -> dict:
        """JSON-ready form (evidence reports)."""
        return {
            "digest": self.digest.to_dict(),
            "signature": self.signature,
            "tail": {
                "dtype": self.tail.dtype,
                "shape": list(self.tail.shape),
                "data": base64.b64encode(self.tail.data).decode("ascii"),
            },
        }

    @classmethod
    def from_json(cls, data: object) -> SignedResult:
        """Parse :meth:`to_json` output received from someone else.

        Raises:
            ValueError: malformed digest, signature or tail.
        """
        if not isinstance(data, dict):
            raise ValueError("a signed result must be an object with digest, signature and tail")
        digest = ResultDigest.from_dict(data.get("digest"))
        signature, tail = data.get("signature"), data.get("tail")
        if not isinstance(signature, str) or len(signature) > 200 or len(decode_signature(signature)) != 64:
            raise ValueError("signature must be a base64url Ed25519 signature")
        if not isinstance(tail, dict) or not isinstance(tail.get("data"), str):
            raise ValueError("tail must be an object with dtype, shape and base64 data")
        try:
            raw = base64.b64decode(tail["data"], validate=True)
            tensor = tensor_from_wire({"dtype": tail.get("dtype"), "shape": tail.get("shape"), "data": raw})
        except (binascii.Error, ProtocolError) as exc:
            raise ValueError(f"bad tail tensor: {exc}") from None
        if len(tensor.shape) != 3 or tensor.shape[1] != 1:
            raise ValueError("tail must have shape (B, 1, H)")
        return cls(digest, signature, tensor)


def signed_result(
    kind: str, session_id: str, position: int, blocks: tuple[int, int], inputs: WireTensor, out: WireTensor, sig: str
) -> SignedResult:
    """The :class:`SignedResult` of a reply, rebuilt from what was sent and what came back."""
    digest = result_digest(kind, session_id, position, blocks[0], blocks[1], inputs, out)
    return SignedResult(digest, sig, tail_of(out))
