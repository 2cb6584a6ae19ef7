"""Signed result digests (spec §11.1, §11.2) and the precision-aware comparison (§11.3)."""

import numpy as np
import pytest

from swarmnode.protocol import ForwardResult, StepResult, decode, encode, tensor_from_numpy
from swarmnode.protocol.compare import relative_errors, tolerance_for
from swarmnode.protocol.signing import ResultDigest, encode_signature, result_digest, sign_result
from swarmnode.trust.attestation import SignedResult, signed_result
from swarmnode.trust.identity import NodeIdentity


def _tensors(seed=0, t=3):
    rng = np.random.default_rng(seed)
    return tuple(tensor_from_numpy(rng.normal(size=(1, t, 8)).astype(np.float32)) for _ in range(2))


def test_it_round_trips_signatures_in_results():
    """§11.2: ``signature`` rides on step_result and forward_result; older peers send none."""
    assert decode(encode(StepResult(id=1, signature="abc"))).signature == "abc"
    assert decode(encode(ForwardResult(id=1, signature="abc"))).signature == "abc"
    assert decode(encode(StepResult(id=1))).signature == ""


def test_it_binds_the_digest_to_span_session_position_input_and_output():
    """§11.1: changing any attested field changes the signed bytes."""
    x, y = _tensors()
    base = result_digest("step", "s", 4, 0, 10, x, y)
    variants = [
        result_digest("forward", "s", 4, 0, 10, x, y),
        result_digest("step", "t", 4, 0, 10, x, y),
        result_digest("step", "s", 5, 0, 10, x, y),
        result_digest("step", "s", 4, 0, 11, x, y),
        result_digest("step", "s", 4, 0, 10, y, y),
        result_digest("step", "s", 4, 0, 10, x, x),
    ]
    assert len({v.to_bytes() for v in variants} | {base.to_bytes()}) == len(variants) + 1
    assert ResultDigest.from_dict(base.to_dict()) == base


def test_it_verifies_a_nodes_signature_and_refuses_tampering():
    """§11.2: a client rebuilds the digest from what it sent and got, and checks the announced key."""
    node, other = NodeIdentity.generate(), NodeIdentity.generate()
    x, y = _tensors()
    digest = result_digest("step", "s", 0, 0, 10, x, y)
    sig = encode_signature(node.sign(digest.to_bytes()))
    assert signed_result("step", "s", 0, (0, 10), x, y, sig).verify(node.public_key)
    assert not signed_result("step", "s", 0, (0, 10), x, y, sig).verify(other.public_key)
    assert not signed_result("step", "s", 1, (0, 10), x, y, sig).verify(node.public_key)
    _, z = _tensors(seed=1)
    assert not signed_result("step", "s", 0, (0, 10), x, z, sig).verify(node.public_key)
    assert not signed_result("step", "s", 0, (0, 10), x, y, sig).verify("not a key")


def test_a_node_signs_results_the_way_clients_check_them():
    """§11.2: what a node attaches to a step or forward verifies against its announced key."""
    node = NodeIdentity.generate()
    x, y = _tensors()
    sig = sign_result(node, "step", "s", 3, (0, 10), x, y)
    assert signed_result("step", "s", 3, (0, 10), x, y, sig).verify(node.public_key)
    assert not signed_result("step", "s", 3, (0, 11), x, y, sig).verify(node.public_key)
    forward = sign_result(node, "forward", "", 0, (0, 10), x, y)
    assert signed_result("forward", "", 0, (0, 10), x, y, forward).verify(node.public_key)


def test_it_parses_signed_results_from_json_strictly():
    node = NodeIdentity.generate()
    x, y = _tensors()
    digest = result_digest("step", "s", 0, 0, 10, x, y)
    result = signed_result("step", "s", 0, (0, 10), x, y, encode_signature(node.sign(digest.to_bytes())))
    again = SignedResult.from_json(result.to_json())
    assert again.verify(node.public_key) and again.tail.shape == (1, 1, 8)
    for broken in [None, {}, {**result.to_json(), "signature": "x"}, {**result.to_json(), "tail": {"data": "??"}}]:
        with pytest.raises(ValueError):
            SignedResult.from_json(broken)


def test_it_tolerates_the_loosest_precision_involved():
    """§11.3."""
    assert tolerance_for("float32") < tolerance_for("float32", "bfloat16") == tolerance_for("bfloat16")
    assert tolerance_for("float32", "int8") == tolerance_for("int8")
    assert tolerance_for("mystery") == tolerance_for("int8")
    ref = np.ones((2, 3, 4), np.float32)
    out = ref.copy()
    out[1, 2] += 0.5
    assert relative_errors(out, ref).tolist() == pytest.approx([0.0, 0.0, 0.5])
