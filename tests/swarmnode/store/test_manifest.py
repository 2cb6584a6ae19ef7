"""Manifests from peers are read with hard limits: any field replaced by any JSON value parses or is a
ManifestError, never another exception (a node must not crash on a stranger's manifest)."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given, settings
from hypothesis import strategies as st

from swarmnode.store import ManifestError, SignedManifest
from swarmnode.store.manifest import Manifest, ObjectRef, key_id, piece_hashes

KEY = Ed25519PrivateKey.generate()


def _ref(data: bytes) -> ObjectRef:
    import hashlib

    return ObjectRef(hashlib.sha256(data).hexdigest(), len(data), piece_hashes(data, 4096))


VALID = json.loads(
    SignedManifest.sign(
        Manifest(
            name="m",
            config={"model_type": "llama"},
            layer_prefix="model.layers",
            blocks=(_ref(b"a" * 5000), _ref(b"b")),
            client=_ref(b"c"),
            tokenizer=_ref(b"t"),
            dtype="float32",
            publisher=key_id(KEY.public_key().public_bytes_raw()),
            piece_size=4096,
        ),  # fmt: skip
        KEY,
    ).to_bytes()
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
PATHS = [
    ("manifest", "name"), ("manifest", "blocks"), ("manifest", "piece_size"), ("manifest", "total_size"),
    ("manifest", "client"), ("manifest", "format"), ("manifest", "publisher"), ("public_key",), ("signature",),
    ("manifest", "config"), ("manifest", "tokenizer"),
]  # fmt: skip


def test_the_valid_manifest_parses_and_verifies():
    assert SignedManifest.from_bytes(json.dumps(VALID).encode()).signature_valid()


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(PATHS), value=JSON)
@example(path=("manifest", "format"), value=True)  # found by this test: true == 1 passed the format check
@example(path=("manifest", "total_size"), value=5003.0)  # a float equal to the sum passed too
def test_any_field_replaced_by_any_json_is_parsed_or_refused_cleanly(path, value):
    document = json.loads(json.dumps(VALID))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        signed = SignedManifest.from_bytes(json.dumps(document).encode())
    except ManifestError:
        return
    assert not signed.signature_valid() or json.dumps(document) == json.dumps(VALID)
