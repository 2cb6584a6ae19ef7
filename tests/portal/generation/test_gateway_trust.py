"""The gateway trusts only what the tracker vouches for (#17, finding 11), attacked with real node processes.

- a suspended or low-scoring node registered on the tracker is never routed to, even as the only node of
  its blocks (the gateway answers 503 instead);
- a node at a registered address that is not the registered node (another key) is never routed to;
- a node that perturbs its outputs is caught by the gateway's sampled audit, the catch is stored as
  evidence against it, it is suspended, and the next request routes around it;
- what crosses the wire between the gateway and the nodes is encrypted (an eavesdropper on the path sees
  no protocol message), audit replays included.
"""

from __future__ import annotations

import pytest

from portal.generation.pool import ModelPool, SwarmUnavailable
from portal.generation.trust import trusted_nodes
from portal.reputation.models import AuditEvidence, NodeStanding
from portal.swarm.models import Node
from tests.portal.generation.conftest import MODEL, CaptureProxy

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _generate(pool: ModelPool, max_new_tokens: int = 6) -> int:
    """One greedy generation as the gateway runs it (the pool routes, its client generates); new tokens."""
    model = pool.get(MODEL)
    ids = model.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    new_tokens = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False).shape[1] - ids.shape[1]
    if model.reporter is not None:
        # Evidence is recorded in a background thread; the in-memory SQLite of the tests locks whole tables,
        # so let it finish before the test reads the database again.
        model.reporter.flush()
    return new_tokens


def _standing(node: Node, **fields) -> None:
    NodeStanding.objects.update_or_create(node=node, defaults=fields)


@pytest.mark.parametrize("standing", ["trusted", "suspended", "low_score", "owner_banned"])
def test_it_never_routes_to_a_node_without_standing(nodes, register, standing):
    """The only node of blocks 0:3 has lost its standing: the gateway refuses rather than use it."""
    only = register(nodes["low"].url, "mallory")
    register(nodes["tail"].url, "alice")
    if standing == "suspended":
        _standing(only, suspended=True, score=0.0)
    elif standing == "low_score":
        _standing(only, score=0.1)  # under REPUTATION_THRESHOLD (0.3)
    elif standing == "owner_banned":
        only.owner.is_active = False
        only.owner.save()
    pool = ModelPool()
    if standing == "trusted":  # the control: the same swarm serves while the node is in good standing
        assert _generate(pool) == 6
        return
    assert nodes["low"].url not in {n.url for n in trusted_nodes(MODEL)}
    with pytest.raises(SwarmUnavailable):
        _generate(pool)


def test_it_drops_a_node_that_lost_its_standing_since_the_last_request(nodes, register):
    """A node suspended between two requests is not used for the second (the pool asks the tracker again)."""
    low = register(nodes["low"].url, "mallory")
    register(nodes["tail"].url, "alice")
    pool = ModelPool()
    _generate(pool)
    _standing(low, suspended=True, score=0.0)
    with pytest.raises(SwarmUnavailable):
        _generate(pool)


def test_it_never_routes_to_another_key_at_a_registered_address(nodes, register):
    """A machine answering at a registered node's address with a key the tracker did not register is not used."""
    low = register(nodes["low"].url, "mallory")
    good = register(nodes["good"].url, "bob")
    register(nodes["tail"].url, "alice")
    good.delete()  # the only registration for blocks 0:3 is now at "low"'s address ...
    Node.objects.filter(pk=low.pk).update(public_key=good.public_key)  # ... with the key of another node
    with pytest.raises(SwarmUnavailable):
        _generate(ModelPool())


def test_it_catches_a_corrupt_node_by_sampled_audit_and_records_evidence(nodes, register, settings):
    """A node that perturbs every output (and signs it) is caught, blamed with evidence, suspended, routed around."""
    settings.CHAT_GATEWAY_AUDIT_RATE = 1.0  # every step audited: the test needs no luck
    settings.REPUTATION_SUSPEND_FAILURES = 1
    bad = register(nodes["bad"].url, "carol")
    good = register(nodes["good"].url, "bob")
    register(nodes["tail"].url, "alice")
    # The attacker built a good reputation first; the honest auditor is barely trusted: routing prefers "bad".
    _standing(bad, score=1.0)
    _standing(good, score=0.35)
    pool = ModelPool()
    assert _generate(pool) == 6  # the request still completes, on the honest node
    model = pool.get(MODEL)
    model.reporter.flush()
    assert model.reporter.errors == []
    caught = AuditEvidence.objects.get(node=bad, passed=False)
    assert caught.auditor_id == good.pk and caught.reporter is None and caught.signatures_verified
    assert caught.relative_error > caught.tolerance and caught.detail["reporter"] == "gateway"
    assert NodeStanding.objects.get(node=bad).suspended
    assert nodes["bad"].url not in {n.url for n in trusted_nodes(MODEL)}
    # Honest nodes were audited too (by the corrupt node's honest forwards) and not blamed.
    assert not AuditEvidence.objects.filter(node=good, passed=False).exists()


@pytest.mark.parametrize("secure", [True, False])
def test_the_gateways_hop_traffic_is_encrypted(nodes, register, settings, secure):
    """An eavesdropper between the gateway and the nodes sees no step or replay result (the control: plaintext)."""
    settings.CHAT_GATEWAY_SECURE = secure
    settings.CHAT_GATEWAY_AUDIT_RATE = 1.0  # replays carry the whole history: they must be encrypted too
    proxies = {name: CaptureProxy(int(nodes[name].url.rsplit(":", 1)[1].split("/")[0])) for name in NODES_ON_PATH}
    try:
        for name, proxy in proxies.items():
            register(proxy.url_for(nodes[name].url), {"low": "mallory", "good": "bob", "tail": "alice"}[name])
        pool = ModelPool()
        assert _generate(pool) == 6
        model = pool.get(MODEL)
        assert model.active_session is not None and model.active_session.audit_stats.hop_audits > 0
        seen = b"".join(bytes(p.from_node) for p in proxies.values())
        leaked = b"step_result" in seen or b"forward_result" in seen
        assert leaked is not secure
    finally:
        for proxy in proxies.values():
            proxy.close()


NODES_ON_PATH = ("low", "good", "tail")
