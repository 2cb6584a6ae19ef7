"""Node identity: announced key string, signatures, persistence, key agreement."""

import os

import pytest

from swarmnode.trust.identity import NodeIdentity, parse_public_key, verify_signature


def test_it_round_trips_the_announced_public_key():
    ident = NodeIdentity.generate()
    parsed = parse_public_key(ident.public_key)
    assert parsed == ident.public


@pytest.mark.parametrize("text", ["", "ed25519:abc", "ed25519:AAAA,x25519:AAAA", "rsa:" + "A" * 43, "x25519:!!!"])
def test_it_refuses_malformed_public_keys(text):
    with pytest.raises(ValueError):
        parse_public_key(text)


def test_it_verifies_its_own_signatures_only():
    a, b = NodeIdentity.generate(), NodeIdentity.generate()
    sig = a.sign(b"step digest")
    assert verify_signature(a.public, sig, b"step digest")
    assert not verify_signature(a.public, sig, b"other digest")
    assert not verify_signature(b.public, sig, b"step digest")
    assert not verify_signature(a.public, b"short", b"step digest")


def test_it_persists_the_identity_with_private_mode(tmp_path):
    path = tmp_path / "keys" / "node.key"
    first = NodeIdentity.load_or_create(path)
    again = NodeIdentity.load_or_create(path)
    assert first.public == again.public
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.write_bytes(b"junk")
    with pytest.raises(ValueError):
        NodeIdentity.load_or_create(path)


def test_it_reads_a_key_file_under_the_users_home(tmp_path, monkeypatch):
    """node.toml's ``identity = "~/..."`` reaches no shell: the node expands ``~`` itself (#21)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    first = NodeIdentity.load_or_create("~/layerswarm/node.key")
    assert (tmp_path / "layerswarm" / "node.key").exists()
    assert NodeIdentity.load_or_create(tmp_path / "layerswarm" / "node.key").public == first.public


def test_it_agrees_the_same_secret_on_both_sides():
    a, b = NodeIdentity.generate(), NodeIdentity.generate()
    assert a.shared_secret(b.public.x25519) == b.shared_secret(a.public.x25519)
