"""An unavailable or exhausted database makes the API answer 503 + Retry-After, never a bare 500."""

from django.db import OperationalError

from portal.swarm import tracker


def test_it_answers_503_with_retry_after_when_the_database_is_overloaded(owner_token, register, heartbeat, monkeypatch):
    node_id = register(owner_token).json()["id"]

    def exhausted(*args, **kwargs):
        raise OperationalError("couldn't get a connection after 3.00 sec")

    monkeypatch.setattr(tracker, "record_heartbeat", exhausted)
    response = heartbeat(owner_token, node_id)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["error"] == "overloaded"
