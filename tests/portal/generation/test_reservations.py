"""Admission holds credits: racing requests of one account cannot spend them twice; limits on generations at once."""

from __future__ import annotations

import threading

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.db import connections

from portal.generation import GenerationRequest, OutOfCredits, Requester, TooManyGenerations, admit, reservations
from portal.ledger.books import balance_of
from portal.ledger.spending import anonymous_tokens_left, charge_usage, tokens_affordable

ASK = [{"role": "user", "content": "Tell me a story."}]


def _request(max_new_tokens: int = 50) -> GenerationRequest:
    return GenerationRequest(model="smollm2", messages=list(ASK), max_new_tokens=max_new_tokens)


@pytest.mark.django_db(transaction=True)
def test_it_admits_only_one_of_8_racing_requests_when_the_balance_pays_for_one(owner, smollm2, settings):
    from django.db import connection

    if connection.vendor != "postgresql":  # SQLite's in-memory test database refuses concurrent writers outright
        pytest.skip("needs PostgreSQL (row locks across threads): DATABASE_URL=postgres://...")
    settings.CHAT_MAX_GENERATIONS_PER_USER = 100  # the balance, not the concurrency cap, must refuse them
    one = reservations.estimate_tokens(_request())
    charge_usage(owner, tokens=tokens_affordable(owner) - one, reference="leave-one-request")
    assert tokens_affordable(owner) == one
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def attacker():
        request = _request()
        start.wait()
        try:
            admit(Requester(owner.pk), request, "203.0.113.7")
            outcomes.append(f"admitted:{request.token_budget}")
        except OutOfCredits:
            outcomes.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attacker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [f"admitted:{one}"] + ["refused"] * 7
    # Whatever the admitted one generates is charged within its hold: the balance cannot go below zero.
    reference = reservations._reservations().get(user_id=owner.pk).reference
    assert reservations.claim(reference)
    assert reservations.settle(reference, 10 * one) == one  # a gateway can never charge past the hold
    assert balance_of(owner) == 0


@pytest.mark.django_db
def test_it_refuses_more_generations_at_once_than_allowed_per_user_and_per_address(owner, other, smollm2, settings):
    settings.CHAT_MAX_GENERATIONS_PER_USER, settings.CHAT_MAX_GENERATIONS_PER_IP = 2, 3
    for _ in range(2):
        admit(Requester(owner.pk), _request(), "198.51.100.1")
    with pytest.raises(TooManyGenerations) as caught:
        admit(Requester(owner.pk), _request(), "198.51.100.2")  # another address does not help
    assert caught.value.code == "too_many_generations" and caught.value.status == 429
    admit(Requester(other.pk), _request(), "198.51.100.1")  # the address's third
    with pytest.raises(TooManyGenerations):
        admit(Requester(other.pk), _request(), "198.51.100.1")

    settled = reservations._reservations().filter(user_id=owner.pk).first().reference
    reservations.settle(settled, 5)  # one finished: room for another
    admit(Requester(owner.pk), _request(), "198.51.100.2")


@pytest.mark.django_db
def test_it_charges_an_anonymous_visitor_what_the_gateway_generated_and_releases_the_rest(smollm2, settings):
    settings.LEDGER_ANONYMOUS_QUOTA_TOKENS = 500
    session = SessionStore()
    session.create()
    visitor = Requester(None, session.session_key)
    first, second = _request(200), _request(200)
    admit(visitor, first, "192.0.2.9")
    admit(visitor, second, "192.0.2.9")
    assert first.token_budget + second.token_budget == 500  # the second got only what the first left
    with pytest.raises(OutOfCredits):
        admit(visitor, _request(), "192.0.2.10")  # all held, even from another address
    assert reservations.claim(first.reservation)
    assert reservations.settle(first.reservation, 49) == 49
    assert reservations.settle(first.reservation, 200) == 0  # once
    assert reservations.abandon(second.reservation, 0) == 0  # never claimed: released
    assert not reservations.claim(second.reservation)  # a gateway that takes it later does not generate
    assert anonymous_tokens_left(session.session_key) == anonymous_tokens_left("ip:192.0.2.9") == 500 - 49
