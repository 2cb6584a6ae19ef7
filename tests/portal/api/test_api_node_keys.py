"""#17 finding 1: nobody collects another node's earnings by announcing a copy of its public key.

The attacker is a stranger with a free account and a node token of their own. The victim's public key
is public (the spans API lists it); the private key is not. Registration needs proof of possession
(a signed portal challenge bound to the registering token), a key belongs to its first proven owner for
ever, and receipts are paid to that owner whoever submits them and whatever nodes announce the key.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from django.utils import timezone

from portal.accounts.models import NodeToken
from portal.ledger.books import balance_of, deposit
from portal.ledger.models import ClientKey, Entry, Receipt
from portal.ledger.settlement import settle_pending
from portal.swarm.models import Node, NodeKey
from swarmnode.protocol import InfoReply
from swarmnode.server.announce import Announcer, PortalRejected
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import SignedReceipt, UsageReceipt, key_of

pytestmark = pytest.mark.django_db

VICTIM_URL = "ws://127.0.0.1:40001/layerswarm/v1"
ATTACKER_URL = "ws://127.0.0.1:40666/layerswarm/v1"


def _challenge(node_client, token: str) -> str:
    response = node_client(token).post("/api/v1/nodes/key-challenge/", {}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["nonce"]


def _register_proven(node_client, register, token: str, identity: NodeIdentity, **overrides):
    """Register as the real node does: fetch a challenge, sign it with the identity key, send the proof."""
    nonce = _challenge(node_client, token)
    proof = {"nonce": nonce, "signature": identity.prove_key(nonce)}
    return register(token, public_key=identity.public_key, key_proof=proof, **overrides)


@pytest.fixture
def victim(owner_token, node_client, register, heartbeat):
    """The owner's node, registered with its key proven and online (so the spans API lists it)."""
    identity = NodeIdentity.generate()
    response = _register_proven(node_client, register, owner_token, identity, url=VICTIM_URL)
    assert response.status_code == 201, response.content
    assert heartbeat(owner_token, response.json()["id"]).status_code == 200
    return identity


def test_it_refuses_a_stranger_registering_a_public_key_copied_from_the_spans_api(
    victim, owner_token, other, other_token, anon_client, node_client, register
):
    spans = anon_client.get("/api/v1/models/smollm2/spans/").json()["spans"]
    copied = spans[0]["public_key"]
    assert copied == victim.public_key

    # 1. Simply announcing the copy.
    response = register(other_token, url=ATTACKER_URL, public_key=copied)
    assert response.status_code == 403 and response.json()["error"] == "key_not_proven"
    # 2. A challenge of the attacker's own, signed with the attacker's own key.
    nonce = _challenge(node_client, other_token)
    forged = {"nonce": nonce, "signature": NodeIdentity.generate().prove_key(nonce)}
    response = register(other_token, url=ATTACKER_URL, public_key=copied, key_proof=forged)
    assert response.status_code == 403 and response.json()["error"] == "key_not_proven"
    # 3. A genuine proof the victim made (captured somewhere): its challenge names the victim's token.
    victim_nonce = _challenge(node_client, owner_token)
    replayed = {"nonce": victim_nonce, "signature": victim.prove_key(victim_nonce)}
    response = register(other_token, url=ATTACKER_URL, public_key=copied, key_proof=replayed)
    assert response.status_code == 403 and response.json()["error"] == "key_not_proven"
    # 4. A tampered nonce, and a malformed key.
    response = register(other_token, url=ATTACKER_URL, public_key=copied, key_proof={**forged, "nonce": nonce + "x"})
    assert response.status_code == 403 and response.json()["error"] == "key_not_proven"
    assert register(other_token, url=ATTACKER_URL, public_key=copied[:-2]).status_code == 400

    assert not Node.objects.filter(owner=other).exists()
    assert [s["url"] for s in anon_client.get("/api/v1/models/smollm2/spans/").json()["spans"]] == [VICTIM_URL]


def test_it_keeps_a_key_with_its_first_owner_even_after_its_node_left(
    victim, owner, owner_token, other_token, node_client, register
):
    """One owner per key, for ever: even holding the private key (a leaked key file), another account's node
    cannot take the key over, neither while the victim's node runs nor after it left."""
    node = Node.objects.get(owner=owner)
    response = _register_proven(node_client, register, other_token, victim, url=ATTACKER_URL)
    assert response.status_code == 409 and response.json()["error"] == "key_taken"
    assert node_client(owner_token).post(f"/api/v1/nodes/{node.pk}/leave/").status_code == 200
    response = _register_proven(node_client, register, other_token, victim, url=ATTACKER_URL)
    assert response.status_code == 409 and response.json()["error"] == "key_taken"
    assert NodeKey.objects.get(signing_key=key_of(victim)).owner == owner
    # The owner's own restart (same token, span and URL) is fine, and so is the key file moved to another
    # machine of the owner: the key is the node, so it is the same node (one row) at its new place.
    assert _register_proven(node_client, register, owner_token, victim, url=VICTIM_URL).status_code == 200
    second = NodeToken.create_for(owner, "second machine")[1]
    response = _register_proven(node_client, register, second, victim, url=ATTACKER_URL, start_block=10, end_block=20)
    assert response.status_code == 200 and response.json()["id"] == node.pk
    assert Node.objects.filter(owner=owner).count() == 1


def test_it_pays_the_victims_owner_for_receipts_the_victim_signed(
    settings, victim, owner, other, other_token, node_client, register, smollm2, django_user_model
):
    """The attacker runs a node of their own on the same span, has a newer node row announcing the victim's
    key (registered before proofs existed), and submits a receipt the victim signed: the victim's owner is paid."""
    settings.LEDGER_ESCROW_MIN_AGE = 0
    settings.LEDGER_ESCROW_RELEASE_SCORE = 0.0
    own = NodeIdentity.generate()
    assert _register_proven(node_client, register, other_token, own, url=ATTACKER_URL).status_code == 201
    Node.objects.create(  # what an unproven registration left behind: the newest node announcing the key
        owner=other, token=NodeToken.objects.filter(user=other).first(), model=smollm2, start_block=0, end_block=10,
        url="ws://127.0.0.1:40667/layerswarm/v1", backend="torch", device="cpu", dtype="float32", version="0.1.0",
        public_key=victim.public_key, state=Node.State.ONLINE, registered_at=timezone.now() + dt.timedelta(hours=1),
    )  # fmt: skip
    payer = django_user_model.objects.create_user("payer", password="payer-Passphrase-9")
    client = NodeIdentity.generate()
    ClientKey.objects.create(user=payer, key=key_of(client), name="payer's script")
    deposit(payer, 10_000, reference="bank:payer")  # bought credits: the receipt is funded, hence payable
    r = UsageReceipt.new(
        session_id="s", model="smollm2", start_block=0, end_block=10, tokens=5,
        client_key=key_of(client), node_key=key_of(victim),
    )  # fmt: skip
    signed = SignedReceipt(r, r.sign_as_client(client), r.sign_as_node(victim))
    other_before = balance_of(other)

    response = node_client(other_token).post("/api/v1/receipts/", signed.to_json(), format="json")
    assert response.status_code == 201, response.content
    receipt = Receipt.objects.get(receipt_id=r.receipt_id)
    assert receipt.earner == owner and receipt.node.owner == owner
    assert settle_pending() == 1
    receipt.refresh_from_db()
    assert receipt.status == "settled"
    credited = Entry.objects.filter(transaction=receipt.transaction, amount__gt=0).select_related("account__node")
    assert sum(e.amount for e in credited) == r.block_tokens
    # Every credit lands with the victim's owner (spendable, held or the node's escrow); none with the attacker.
    assert {e.account.user_id or e.account.node.owner_id for e in credited} == {owner.pk}
    assert balance_of(other) == other_before


class _AnnouncedNode:
    """What the real :class:`~swarmnode.server.announce.Announcer` reads of a node: its info and identity."""

    def __init__(self, url: str, identity: NodeIdentity, announced_key: str | None = None) -> None:
        self.url = url
        self.hidden_size = 576
        self.identity = identity
        self.announced_key = announced_key or identity.public_key

    def info(self) -> InfoReply:
        return InfoReply(
            model="smollm2", start_block=0, end_block=10, backend="torch", device="cpu", dtype="float32",
            cache_tokens_left=100, max_session_length=8192, version="0.1.0", open_sessions=0, throughput=5.0,
            public_key=self.announced_key,
        )  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_the_real_announcer_proves_its_key_and_a_copy_of_it_is_refused(live_server, smollm2, owner, other):
    """Over HTTP, against the portal: the node's announcer does the challenge-response; an attacker's node
    announcing the victim's key (it holds only its own identity) is refused and never registered."""
    victim = NodeIdentity.generate()
    node = _AnnouncedNode(VICTIM_URL, victim)
    announcer = Announcer(node, live_server.url, NodeToken.create_for(owner, "gpu")[1], timeout=10)
    asyncio.run(announcer.announce_once())
    assert announcer.state == "online" and NodeKey.objects.get(signing_key=key_of(victim)).owner == owner

    thief = _AnnouncedNode(ATTACKER_URL, NodeIdentity.generate(), announced_key=victim.public_key)
    attacker = Announcer(thief, live_server.url, NodeToken.create_for(other, "gpu")[1], timeout=10)
    attacker._key_proof = lambda public_key: _sign_with(attacker, thief.identity)  # signs what it can
    with pytest.raises(PortalRejected) as refused:
        asyncio.run(attacker.announce_once())
    assert refused.value.status == 403 and "not a signature of the challenge" in refused.value.detail
    assert list(Node.objects.values_list("owner", flat=True)) == [owner.pk]


async def _sign_with(announcer: Announcer, identity: NodeIdentity) -> dict:
    """The attacker's best effort: a real challenge of its own, signed with the key it holds."""
    reply = await announcer._post("/api/v1/nodes/key-challenge/", None)
    return {"nonce": reply["nonce"], "signature": identity.prove_key(reply["nonce"])}


@pytest.mark.parametrize(
    "proof",
    ["x", {"nonce": "n"}, {"nonce": "n", "signature": "!" * 86}, {"nonce": ["n"], "signature": "A" * 86}, None],
)
def test_it_answers_malformed_key_proofs_with_a_clear_400(owner_token, register, proof):
    response = register(owner_token, public_key=NodeIdentity.generate().public_key, key_proof=proof)
    assert response.status_code == 400 and "key_proof" in response.json()
    assert not Node.objects.exists()
