"""Usage receipts (spec §8): canonical encoding, both signatures, and the node's countersigning rules.

The last tests talk to a real node process (the session-scoped tiny node) through raw frames and
through the client library, and check the node countersigns exactly what it served.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from swarmnode.client.session import InferenceSession
from swarmnode.discovery import PeerInfo
from swarmnode.protocol import (
    CloseSession,
    Info,
    OpenSession,
    SessionClosed,
    Step,
    StepResult,
    decode,
    encode,
    tensor_from_numpy,
)
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import (
    ReceiptError,
    SignedReceipt,
    UsageReceipt,
    countersign,
    key_of,
    signing_key,
)

CLIENT = NodeIdentity.generate()
NODE = NodeIdentity.generate()


def receipt(**overrides) -> UsageReceipt:
    fields = dict(
        session_id="s1",
        model="tiny",
        start_block=0,
        end_block=6,
        tokens=10,
        client_key=key_of(CLIENT),
        node_key=key_of(NODE),
    )
    fields.update(overrides)
    return UsageReceipt.new(**fields)


def signed(r: UsageReceipt | None = None) -> SignedReceipt:
    r = r or receipt()
    return SignedReceipt(r, r.sign_as_client(CLIENT), r.sign_as_node(NODE))


# -- §8.1 canonical encoding ------------------------------------------------------------------------------


def test_it_encodes_a_receipt_canonically_and_round_trips():
    r = receipt()
    data = r.encode()
    assert list(msgpack.unpackb(data)) == sorted(msgpack.unpackb(data))  # keys in sorted order
    assert UsageReceipt.decode(data) == r
    assert UsageReceipt.from_text(r.to_text()) == r
    assert r.block_tokens == 60


def test_it_refuses_non_canonical_or_malformed_receipt_bytes():
    r = receipt()
    body = msgpack.unpackb(r.encode())
    unsorted = msgpack.packb(dict(reversed(list(body.items()))), use_bin_type=True)
    with pytest.raises(ReceiptError, match="canonical"):
        UsageReceipt.decode(unsorted)
    for bad in (
        b"\xc1",  # not msgpack
        msgpack.packb([1, 2]),
        msgpack.packb({**body, "extra": 1}),
        msgpack.packb({k: v for k, v in body.items() if k != "tokens"}),
        msgpack.packb(dict(sorted({**body, "tokens": -5}.items()))),
        msgpack.packb(dict(sorted({**body, "tokens": True}.items()))),
        msgpack.packb(dict(sorted({**body, "tokens": 1.5}.items()))),
        msgpack.packb(dict(sorted({**body, "start_block": 6}.items()))),
        msgpack.packb(dict(sorted({**body, "receipt_id": "../etc"}.items()))),
        msgpack.packb(dict(sorted({**body, "node_key": body["client_key"]}.items()))),
        msgpack.packb(dict(sorted({**body, "v": 2}.items()))),
        msgpack.packb(msgpack.ExtType(1, b"x")),
        b"\x80" * 5000,
    ):
        with pytest.raises(ReceiptError):
            UsageReceipt.decode(bad)


def test_it_never_uses_pickle():
    import swarmnode.trust.receipts as module

    source = open(module.__file__).read()
    assert "pickle" not in source.replace("Never pickle", "")


# -- signatures ---------------------------------------------------------------------------------------------


def test_it_verifies_both_signatures_and_refuses_tampering():
    s = signed()
    s.verify()
    assert SignedReceipt.from_json(s.to_json()) == s
    more = UsageReceipt(**{**s.receipt.__dict__, "tokens": 11})
    with pytest.raises(ReceiptError, match="client"):
        SignedReceipt(more, s.client_signature, s.node_signature).verify()
    with pytest.raises(ReceiptError, match="node"):
        SignedReceipt(s.receipt, s.client_signature, s.client_signature).verify()  # roles do not swap
    with pytest.raises(ReceiptError):
        SignedReceipt.from_json({**s.to_json(), "node_signature": "!!"})
    with pytest.raises(ReceiptError):
        SignedReceipt.from_json({"receipt": s.receipt.to_text()})
    with pytest.raises(ReceiptError):
        SignedReceipt.from_json(["not", "an", "object"])


def test_it_signs_only_with_the_named_keys():
    r = receipt()
    with pytest.raises(ReceiptError):
        r.sign_as_client(NODE)
    with pytest.raises(ReceiptError):
        r.sign_as_node(CLIENT)


# -- §8.3 the node's rules ------------------------------------------------------------------------------------


def _countersign(r: UsageReceipt, served: int = 10, **where):
    span = dict(session_id="s1", model="tiny", start_block=0, end_block=6, served=served)
    span.update(where)
    return countersign(NODE, r.to_text(), r.sign_as_client(CLIENT), **span)


def test_it_countersigns_a_claim_up_to_what_was_served():
    _countersign(receipt(tokens=10), served=10).verify()
    _countersign(receipt(tokens=4), served=10).verify()  # a client may claim less
    with pytest.raises(ReceiptError, match="served 9"):
        _countersign(receipt(tokens=10), served=9)


def test_it_refuses_to_countersign_another_session_span_model_or_node():
    with pytest.raises(ReceiptError, match="session"):
        _countersign(receipt(), session_id="s2")
    with pytest.raises(ReceiptError, match="tiny"):
        _countersign(receipt(end_block=5))
    with pytest.raises(ReceiptError):
        _countersign(receipt(model="other"))
    other_node = NodeIdentity.generate()
    with pytest.raises(ReceiptError, match="another node"):
        _countersign(receipt(node_key=key_of(other_node)))
    r = receipt()
    with pytest.raises(ReceiptError, match="client"):
        span = dict(session_id="s1", model="tiny", start_block=0, end_block=6, served=10)
        countersign(NODE, r.to_text(), r.sign_as_node(NODE), **span)


def test_it_reads_the_signing_key_from_an_announced_key():
    assert signing_key(NODE.public_key) == key_of(NODE)
    with pytest.raises(ReceiptError):
        signing_key("ed25519:nope")


# -- a real node --------------------------------------------------------------------------------------------------


def _hidden(batch: int, tokens: int):
    return tensor_from_numpy(np.random.default_rng(0).standard_normal((batch, tokens, 64)).astype(np.float32))


def test_it_countersigns_on_close_what_a_real_node_served(tiny_node):
    ws = connect(tiny_node.url, compression=None, max_size=None)

    def ask(msg):
        ws.send(encode(msg))
        return decode(ws.recv(timeout=30))

    info = ask(Info(id=1))
    node_key = signing_key(info.public_key)
    assert ask(OpenSession(id=2, session_id="rcpt", max_length=32)).session_id == "rcpt"
    assert isinstance(ask(Step(id=3, session_id="rcpt", position=0, hidden=_hidden(2, 5))), StepResult)
    assert isinstance(ask(Step(id=4, session_id="rcpt", position=5, hidden=_hidden(2, 1))), StepResult)
    ask(Step(id=5, session_id="rcpt", position=0, hidden=_hidden(2, 1)))  # bad position: not served, not counted

    def close_with(tokens: int, sid: str = "rcpt"):
        r = UsageReceipt.new(
            session_id=sid,
            model=info.model,
            start_block=info.start_block,
            end_block=info.end_block,
            tokens=tokens,
            client_key=key_of(CLIENT),
            node_key=node_key,
        )
        signature = r.sign_as_client(CLIENT)
        return r, ask(CloseSession(id=6, session_id=sid, receipt=r.to_text(), client_signature=signature))

    r, reply = close_with(13)  # claims more than 2 x 6 = 12 positions: refused, session closed anyway
    assert isinstance(reply, SessionClosed) and reply.tokens == 12
    assert reply.node_signature == "" and "served 12" in reply.receipt_error
    ask(OpenSession(id=7, session_id="rcpt2", max_length=32))
    ask(Step(id=8, session_id="rcpt2", position=0, hidden=_hidden(2, 6)))
    r, reply = close_with(12, "rcpt2")
    assert reply.tokens == 12 and reply.receipt_error == ""
    SignedReceipt(r, r.sign_as_client(CLIENT), reply.node_signature).verify()
    # A garbage receipt still closes the session, with a clear reason and no signature.
    ask(OpenSession(id=9, session_id="rcpt3", max_length=8))
    reply = ask(CloseSession(id=10, session_id="rcpt3", receipt="@@@", client_signature="x"))
    assert isinstance(reply, SessionClosed) and reply.node_signature == "" and reply.receipt_error
    ws.close()


def test_it_collects_countersigned_receipts_in_the_client_session(tiny_node):
    span = connect(tiny_node.url, compression=None, max_size=None)
    span.send(encode(Info(id=1)))
    info = decode(span.recv(timeout=30))
    span.close()
    peer = PeerInfo.from_reply(tiny_node.url, info)
    assert peer.public_key == info.public_key
    got = []
    session = InferenceSession([peer], 16, identity=CLIENT, on_receipt=got.append, model=info.model)
    session.step(torch.zeros(1, 4, 64))  # (B, T, H)
    session.step(torch.zeros(1, 1, 64))
    session.close()
    assert session.receipt_errors == []
    assert got == session.receipts and len(got) == 1
    got[0].verify()
    assert got[0].receipt.tokens == 5 and got[0].receipt.block_tokens == 5 * 6
    assert got[0].receipt.client_key == key_of(CLIENT)
    # Without an identity nothing is signed and closing works as before.
    plain = InferenceSession([peer], 16)
    plain.step(torch.zeros(1, 2, 64))
    plain.close()
    assert plain.receipts == []


def test_it_prints_a_stable_client_key_for_an_identity_file(tmp_path, capsys):
    from swarmnode.cli import main

    main(["identity", str(tmp_path / "me.identity")])
    first = capsys.readouterr().out
    main(["identity", str(tmp_path / "me.identity")])
    import json

    assert json.loads(first) == json.loads(capsys.readouterr().out)
    assert json.loads(first)["client_key"] == key_of(NodeIdentity.load_or_create(tmp_path / "me.identity"))
