"""#17 finding 14: floods of log-ins, sign-ups, key and token creation, /v1 and /api requests get 429.

Each test lowers one limit (the defaults are in settings.py) and sends what an attacker would, from one address.
"""

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from portal.accounts.models import ApiKey, NodeToken

ATTACKER = "203.0.113.66"


def _limit(settings, name: str, rate: str) -> None:
    settings.RATE_LIMITS = [(n, m, p, k, rate if n == name else r) for n, m, p, k, r in settings.RATE_LIMITS]


def _signup(client: Client, i: int):
    password = "a-long-Passphrase-9"
    body = {"username": f"sybil{i}", "email": f"sybil{i}@example.net", "password1": password, "password2": password}
    return client.post("/accounts/signup/", body)


def test_it_limits_sign_ups_per_address(settings, db):
    _limit(settings, "signup", "3/h")
    for i in range(3):
        assert _signup(Client(REMOTE_ADDR=ATTACKER), i).status_code == 302
    response = _signup(Client(REMOTE_ADDR=ATTACKER), 3)
    assert response.status_code == 429 and response["Retry-After"]
    assert not User.objects.filter(username="sybil3").exists()
    assert _signup(Client(REMOTE_ADDR="198.51.100.1"), 4).status_code == 302  # someone else is not blocked


def test_a_spoofed_forwarded_for_does_not_buy_more_sign_ups(settings, db):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    _limit(settings, "signup", "2/h")
    statuses = [
        _signup(Client(REMOTE_ADDR=ATTACKER, HTTP_X_FORWARDED_FOR=f"192.0.2.{i}"), i).status_code for i in range(4)
    ]
    assert statuses == [302, 302, 429, 429]
    # Behind our own nginx, each visitor has their own allowance.
    behind = [
        _signup(Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}"), 10 + i).status_code
        for i in range(3)
    ]
    assert behind == [302, 302, 302]


def test_it_limits_password_guessing_per_address_and_per_username(settings, owner):
    _limit(settings, "login-user", "3/m")
    for i in range(3):
        reply = Client(REMOTE_ADDR=f"192.0.2.{i}").post("/accounts/login/", {"username": "alice", "password": "guess"})
        assert reply.status_code == 200  # the form again: wrong password
    # A botnet (a new address per guess) is still stopped: the username is counted too, even with the right password.
    reply = Client(REMOTE_ADDR="192.0.2.99").post(
        "/accounts/login/", {"username": "alice", "password": "alice-password-1"}
    )
    assert reply.status_code == 429
    _limit(settings, "login", "2/m")
    statuses = [
        Client(REMOTE_ADDR=ATTACKER).post("/accounts/login/", {"username": f"u{i}", "password": "x"}).status_code
        for i in range(3)
    ]
    assert statuses == [200, 200, 429]


def test_it_limits_api_key_and_node_token_creation(settings, owner):
    _limit(settings, "api-key", "2/h")
    _limit(settings, "node-token", "2/h")
    client = Client()
    client.force_login(owner)
    assert [client.post("/accounts/profile/", {"name": "k"}).status_code for _ in range(3)] == [200, 200, 429]
    assert ApiKey.objects.filter(user=owner).count() == 2
    statuses = [client.post("/contribute/", {"name": "t"}).status_code for _ in range(2)]
    statuses.append(client.post("/contribute/browser/token/").status_code)
    assert statuses == [200, 200, 429] and NodeToken.objects.filter(user=owner).count() == 2


def test_it_limits_the_openai_api_per_key(settings, owner_api_key):
    _limit(settings, "openai", "3/m")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {owner_api_key}")
    statuses = [client.get("/v1/models").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    error = client.get("/v1/models").json()["error"]
    assert error["type"] == "rate_limit_exceeded"


@pytest.mark.parametrize("who", ["anon", "user"])
def test_it_throttles_the_rest_api(settings, smollm2, owner_api_key, who):
    settings.API_THROTTLE_RATES = {**settings.API_THROTTLE_RATES, who: "3/min"}
    client = APIClient(REMOTE_ADDR=ATTACKER)
    if who == "user":
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {owner_api_key}")
    statuses = [client.get("/api/v1/models/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert "Retry-After" in client.get("/api/v1/models/")


def test_it_throttles_reputation_reports(settings, other_client, smollm2):
    settings.API_THROTTLE_RATES = {**settings.API_THROTTLE_RATES, "reports": "2/min"}
    body = {"node": 999_999, "ok": 1, "failed": 0}
    statuses = [other_client.post("/api/v1/reputation/steps/", body, format="json").status_code for _ in range(3)]
    assert statuses == [404, 404, 429]
