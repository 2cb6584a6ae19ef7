"""Signed DHT records (swarmnode/dht/records.py): what a stranger can forge, replay or flood is refused."""

from __future__ import annotations

import dataclasses
import time

import msgpack
import pytest

from swarmnode.dht.records import (
    MAX_EXTRA_FIELDS,
    MAX_TTL_S,
    MAX_VALUE_BYTES,
    REQUIRED_FIELDS,
    SIGNING_CONTEXT,
    InvalidRecord,
    block_key,
    block_keys,
    make_record,
    node_id,
    parse_block_key,
    sign,
    signed,
    to_peer,
    verify,
)
from swarmnode.trust.identity import NodeIdentity
from tests.swarmnode.dht.conftest import smollm2_peer


@pytest.fixture(scope="module")
def alice() -> NodeIdentity:
    return NodeIdentity.generate()


@pytest.fixture(scope="module")
def mallory() -> NodeIdentity:
    return NodeIdentity.generate()


def test_it_round_trips_a_signed_record(alice):
    record, value = signed(smollm2_peer(alice), alice, ttl=60)
    got = verify(block_key("smollm2", 3), node_id(alice.public_key), value)
    assert got == record
    peer = to_peer(got)
    assert (peer.url, peer.start_block, peer.end_block, peer.public_key) == (
        "ws://10.0.0.1:7000/layerswarm/v1",
        0,
        10,
        alice.public_key,
    )
    assert peer.throughput == 12.5 and peer.backend == "onnxruntime" and peer.node_id == 0
    assert len(value) < 1024
    assert block_keys(record) == [block_key("smollm2", b) for b in range(10)]


def test_it_refuses_an_unsigned_value(alice):
    record = make_record(smollm2_peer(alice), ttl=60)
    body = msgpack.packb(record)
    with pytest.raises(InvalidRecord, match="unsigned|malformed"):
        verify(block_key("smollm2", 0), node_id(alice.public_key), body)
    with pytest.raises(InvalidRecord, match="bad signature"):
        verify(block_key("smollm2", 0), node_id(alice.public_key), msgpack.packb({"r": body, "s": b"\0" * 64}))


def test_it_refuses_a_forged_signature(alice, mallory):
    """Mallory rewrites Alice's URL to her own machine and signs with her own key: the signature fails."""
    record = make_record(smollm2_peer(alice, url="ws://6.6.6.6:1/layerswarm/v1"), ttl=60)
    body = msgpack.packb(record)
    forged = msgpack.packb({"r": body, "s": mallory.sign(SIGNING_CONTEXT + body)})
    with pytest.raises(InvalidRecord, match="bad signature"):
        verify(block_key("smollm2", 0), node_id(alice.public_key), forged)


def test_it_refuses_a_tampered_record(alice):
    _, value = signed(smollm2_peer(alice), alice, ttl=60)
    outer = msgpack.unpackb(value)
    record = msgpack.unpackb(outer["r"])
    record["throughput"] = 1e9  # claims to be the fastest node
    tampered = msgpack.packb({"r": msgpack.packb(record), "s": outer["s"]})
    with pytest.raises(InvalidRecord, match="bad signature"):
        verify(block_key("smollm2", 0), node_id(alice.public_key), tampered)


def test_it_refuses_a_record_stored_under_another_nodes_id(alice, mallory):
    """A foreign-key record: Mallory's valid record stored as Alice's subkey (to overwrite or hide hers)."""
    _, value = signed(smollm2_peer(mallory), mallory, ttl=60)
    with pytest.raises(InvalidRecord, match="another node"):
        verify(block_key("smollm2", 0), node_id(alice.public_key), value)


def test_it_refuses_signing_a_record_for_another_key(alice, mallory):
    with pytest.raises(ValueError, match="own key"):
        sign(make_record(smollm2_peer(alice), ttl=60), mallory)


def test_it_refuses_expired_and_too_long_lived_records(alice):
    sub = node_id(alice.public_key)
    _, value = signed(smollm2_peer(alice), alice, ttl=60)
    with pytest.raises(InvalidRecord, match="expired"):
        verify(block_key("smollm2", 0), sub, value, now=time.time() + 61)
    _, forever = signed(smollm2_peer(alice), alice, ttl=MAX_TTL_S * 10)
    with pytest.raises(InvalidRecord, match="too long"):
        verify(block_key("smollm2", 0), sub, forever)
    with pytest.raises(InvalidRecord, match="outlives"):  # a DHT entry kept past the record's own expiry
        verify(block_key("smollm2", 0), sub, value, dht_expiration=time.time() + 600)


def test_it_refuses_a_record_under_a_block_or_model_it_does_not_serve(alice):
    sub = node_id(alice.public_key)
    _, value = signed(smollm2_peer(alice, 0, 10), alice, ttl=60)
    with pytest.raises(InvalidRecord, match="does not hold"):  # replayed under block 20 to look like more coverage
        verify(block_key("smollm2", 20), sub, value)
    with pytest.raises(InvalidRecord, match="does not hold"):
        verify(block_key("othermodel", 3), sub, value)
    with pytest.raises(InvalidRecord, match="not a block key"):
        verify("somewhere/else", sub, value)


def test_it_refuses_oversized_and_garbled_values(alice):
    sub = node_id(alice.public_key)
    with pytest.raises(InvalidRecord, match="oversized"):
        verify(block_key("smollm2", 0), sub, b"\x80" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(ValueError, match="over the"):
        signed(dataclasses.replace(smollm2_peer(alice), version="x" * 3000), alice, ttl=60)
    for junk in (b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"r": 1, "s": 2}), msgpack.packb("x" * 100)):
        with pytest.raises(InvalidRecord):
            verify(block_key("smollm2", 0), sub, junk)


@pytest.mark.parametrize(
    "change",
    [
        {"start_block": 10, "end_block": 5},
        {"end_block": 31},
        {"state": "boss"},
        {"url": "http://example.com/"},
        {"throughput": float("nan")},
        {"cache_tokens_left": -1},
        {"relay": "yes"},
        {"model": ""},
        {"extra": [1]},
        {"extra": {"a": 1}},
    ],
)
def test_it_refuses_records_with_bad_fields_even_if_signed(alice, change):
    """A node that signs nonsense (a buggy or hostile one) is refused as well: the signature is not enough."""
    record = make_record(smollm2_peer(alice), ttl=60)
    record.update(change)
    body = msgpack.packb(record)
    value = msgpack.packb({"r": body, "s": alice.sign(SIGNING_CONTEXT + body)})
    with pytest.raises(InvalidRecord):
        verify(block_key("smollm2", 0), node_id(alice.public_key), value)


def test_it_accepts_a_tombstone_without_url(alice):
    record, value = signed(smollm2_peer(alice, url=""), alice, ttl=60, state="offline")
    assert verify(block_key("smollm2", 0), node_id(alice.public_key), value)["state"] == "offline"


def test_block_keys_parse_back_even_for_names_with_slashes():
    assert parse_block_key(block_key("org/model-v1", 7)) == ("org/model-v1", 7)


def _signed_raw(identity: NodeIdentity, record: dict) -> bytes:
    body = msgpack.packb(record)
    return msgpack.packb({"r": body, "s": identity.sign(SIGNING_CONTEXT + body)})


def test_records_of_newer_and_older_nodes_pass_and_extra_fields_cannot_claim_reputation(alice):
    """Version skew: a node whose PeerInfo grew a field, or one that predates one, is still stored and read."""
    sub, key = node_id(alice.public_key), block_key("smollm2", 0)
    newer = make_record(smollm2_peer(alice), ttl=60)
    newer.update(future_field="x", reputation=1.0, node_id=7)
    peer = to_peer(verify(key, sub, _signed_raw(alice, newer)))
    assert peer.reputation is None and peer.node_id == 0  # the tracker's view, never a record's word
    older = {k: v for k, v in make_record(smollm2_peer(alice), ttl=60).items() if k in REQUIRED_FIELDS}
    assert to_peer(verify(key, sub, _signed_raw(alice, older))).url == smollm2_peer(alice).url
    many = make_record(smollm2_peer(alice), ttl=60)
    many.update({f"f{i}": i for i in range(MAX_EXTRA_FIELDS + 1)})
    with pytest.raises(InvalidRecord, match="extra fields|malformed"):  # the decoder bounds the map too
        verify(key, sub, _signed_raw(alice, many))
