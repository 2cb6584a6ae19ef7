"""Digests of step and forward results that nodes sign, so a wrong output is attributable (spec §11).

Pure functions (hashlib + msgpack): the node builds the digest of what it computed and signs its
bytes; a client rebuilds the same digest from what it sent and what came back, and checks the
signature against the key the node announced (§1.4). The portal rebuilds it from the fields of an
evidence report. The digest binds the node's span, the session and position, and SHA-256 hashes of
the input, the whole output, and the output's last position (the *tail*, small enough to attach
to evidence).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass
from typing import Protocol

import msgpack

from swarmnode.protocol.tensors import WireTensor, tensor_from_numpy

DOMAIN = "layerswarm/result/v1"  # §11.1: never valid as any other signed message


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def tail_of(tensor: WireTensor) -> WireTensor:
    """The last position of a ``(B, T, H)`` tensor, as ``(B, 1, H)`` (spec §11.1)."""
    arr = tensor.to_numpy()
    return tensor_from_numpy(arr[:, -1:, :], tensor.dtype)


@dataclass(frozen=True)
class ResultDigest:
    """What a node attests about one result (spec §11.1).

    ``position`` is the cache length *before* a step (0 for a forward); ``tokens`` its ``T``.
    """

    kind: str  # "step" or "forward"
    session_id: str
    position: int
    tokens: int
    start_block: int
    end_block: int
    dtype: str
    input_sha256: str
    output_sha256: str
    tail_sha256: str

    def to_bytes(self) -> bytes:
        """The exact bytes that are signed: a msgpack array, domain first (§11.1)."""
        return msgpack.packb(
            [
                DOMAIN,
                self.kind,
                self.session_id,
                self.position,
                self.tokens,
                self.start_block,
                self.end_block,
                self.dtype,
                self.input_sha256,
                self.output_sha256,
                self.tail_sha256,
            ],
            use_bin_type=True,
        )

    def to_dict(self) -> dict:
        """JSON-ready fields (evidence reports)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ResultDigest:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: a field is missing or of the wrong type.
        """
        kinds = {"kind": str, "session_id": str, "position": int, "tokens": int, "start_block": int}
        kinds.update(end_block=int, dtype=str, input_sha256=str, output_sha256=str, tail_sha256=str)
        values = {}
        for name, kind in kinds.items():
            value = data.get(name) if isinstance(data, dict) else None
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and len(value) > 256):
                raise ValueError(f"digest field {name!r} must be a {kind.__name__}")
            values[name] = value
        return cls(**values)


def result_digest(
    kind: str,
    session_id: str,
    position: int,
    start_block: int,
    end_block: int,
    inputs: WireTensor,
    output: WireTensor,
) -> ResultDigest:
    """The digest of a result: ``output`` computed by blocks ``[start_block, end_block)`` from ``inputs``."""
    return ResultDigest(
        kind=kind,
        session_id=session_id,
        position=position,
        tokens=inputs.shape[1] if len(inputs.shape) >= 2 else 0,
        start_block=start_block,
        end_block=end_block,
        dtype=output.dtype,
        input_sha256=sha256_hex(inputs.data),
        output_sha256=sha256_hex(output.data),
        tail_sha256=sha256_hex(tail_of(output).data) if len(output.shape) == 3 else sha256_hex(output.data),
    )


class Signer(Protocol):
    """Signs bytes with the key a node announces (:class:`~swarmnode.trust.identity.NodeIdentity`, Ed25519).

    A protocol rather than the identity class, so that this module stays free of ``cryptography``.
    """

    def sign(self, message: bytes) -> bytes:
        """The raw signature of ``message``."""
        ...


def sign_result(
    signer: Signer,
    kind: str,
    session_id: str,
    position: int,
    span: tuple[int, int],
    inputs: WireTensor,
    output: WireTensor,
) -> str:
    """The wire ``signature`` of a result (spec §11.2): who computed what from what.

    Args:
        signer: the node's identity.
        kind: ``"step"`` or ``"forward"``.
        session_id: the session (``""`` for a forward).
        position: the cache length before the step (0 for a forward).
        span: the node's blocks ``(start, end)``, end exclusive.
        inputs: the hidden states the node received.
        output: the hidden states it returns.

    Returns:
        The unpadded base64url signature of :func:`result_digest`'s bytes, as clients check it
        (:func:`swarmnode.trust.attestation.signed_result`).
    """
    digest = result_digest(kind, session_id, position, span[0], span[1], inputs, output)
    return encode_signature(signer.sign(digest.to_bytes()))


def encode_signature(signature: bytes) -> str:
    """Unpadded base64url of a raw signature (the wire form in ``signature`` fields)."""
    return base64.urlsafe_b64encode(signature).decode("ascii").rstrip("=")


def decode_signature(text: str) -> bytes:
    """Raw bytes of a wire signature; ``b""`` when it is not base64url."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return b""
