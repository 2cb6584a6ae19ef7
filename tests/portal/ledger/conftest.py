"""Fixtures of the ledger tests: nodes with real Ed25519 identities, client keys, signed receipts."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from portal.accounts.models import NodeToken
from portal.ledger.books import deposit
from portal.ledger.models import ClientKey
from portal.ledger.spending import charge_usage
from portal.swarm.models import Node, SwarmModel
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import SignedReceipt, UsageReceipt, key_of

IDENTITIES = [NodeIdentity.generate() for _ in range(6)]  # Ed25519 keys are cheap; reuse across tests


def make_node(owner, identity: NodeIdentity, model: SwarmModel, blocks=(0, 10), age_s: float = 3 * 86400) -> Node:
    """A registered node of ``owner`` announcing ``identity`` for ``blocks``, registered ``age_s`` ago."""
    token, _ = NodeToken.create_for(owner, f"machine {identity.public_key[:12]}")
    return Node.objects.create(
        owner=owner,
        token=token,
        model=model,
        start_block=blocks[0],
        end_block=blocks[1],
        url=f"ws://127.0.0.1:{40000 + Node.objects.count()}/layerswarm/v1",
        backend="torch",
        device="cpu",
        dtype="float32",
        version="0.1.0",
        public_key=identity.public_key,
        state=Node.State.ONLINE,
        registered_at=timezone.now() - dt.timedelta(seconds=age_s),
    )


def make_receipt(client: NodeIdentity, node: Node, node_identity: NodeIdentity, tokens: int) -> SignedReceipt:
    """A receipt for ``tokens`` positions through ``node``'s span, signed by both sides."""
    r = UsageReceipt.new(
        session_id="sess",
        model=node.model.name,
        start_block=node.start_block,
        end_block=node.end_block,
        tokens=tokens,
        client_key=key_of(client),
        node_key=key_of(node_identity),
    )
    return SignedReceipt(r, r.sign_as_client(client), r.sign_as_node(node_identity))


@pytest.fixture(autouse=True)
def ledger_settings(settings):
    """Small, round numbers (before any user exists, so grants use them); escrow off unless a test turns it on."""
    settings.LEDGER_STARTING_GRANT = 1000
    settings.LEDGER_CREDITS_PER_TOKEN = 10
    settings.LEDGER_MIN_PAYOUT = 1
    settings.LEDGER_ESCROW_MIN_AGE = 0
    settings.LEDGER_ESCROW_RELEASE_SCORE = 0.0
    return settings


@pytest.fixture
def owner_node(owner, smollm2):
    """The owner's node (blocks 0:10) and its identity."""
    return make_node(owner, IDENTITIES[0], smollm2), IDENTITIES[0]


@pytest.fixture
def client_identity(ledger_settings, other):
    """A client key registered to ``other``: its receipts are paid from other's account.

    Bob already chatted his grant away and bought as many credits instead (his balance is still the
    grant's 1000), so what his key pays for is funded by real value and may be paid out to the node owner.
    """
    identity = IDENTITIES[1]
    ClientKey.objects.create(user=other, key=key_of(identity), name="bob's script")
    grant = ledger_settings.LEDGER_STARTING_GRANT
    charge_usage(other, tokens=grant // ledger_settings.LEDGER_CREDITS_PER_TOKEN, reference=f"bob-chat:{other.pk}")
    deposit(other, grant, reference=f"bank:bob:{other.pk}")
    return identity


@pytest.fixture
def revenue(ledger_settings, django_user_model):
    """Collected revenue of 100,000 credits: carol bought credits and chatted them (and her grant) away.

    It funds up to that many credits of gateway work (paid from ``system:rewards``) as payable earnings.
    """
    carol = django_user_model.objects.create_user("carol", "carol@example.org", "pw")
    deposit(carol, 100_000, reference="bank:carol")
    grant = ledger_settings.LEDGER_STARTING_GRANT
    charge_usage(carol, tokens=(100_000 + grant) // ledger_settings.LEDGER_CREDITS_PER_TOKEN, reference="carol-chat")
    return 100_000


@pytest.fixture
def gateway_client(db):
    """The portal gateway's key: receipts paid from ``system:rewards``."""
    identity = IDENTITIES[2]
    ClientKey.objects.create(user=None, key=key_of(identity), name="portal gateway")
    return identity


@pytest.fixture
def node_factory(smollm2):
    """``node_factory(owner, identity, blocks=(0, 10), age_s=...)``: a registered node (see :func:`make_node`)."""
    return lambda owner, identity, blocks=(0, 10), age_s=3 * 86400: make_node(owner, identity, smollm2, blocks, age_s)


@pytest.fixture
def receipt_factory():
    """``receipt_factory(client, node, node_identity, tokens)``: a doubly-signed receipt."""
    return make_receipt


@pytest.fixture
def identities():
    """Six Ed25519 identities."""
    return IDENTITIES
