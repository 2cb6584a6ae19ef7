"""The node-token cache of the heartbeat fast path (portal/accounts/tokencache.py): written when a token
authenticates, never past its expiry, and withdrawn (a tombstone that no lookup in flight can overwrite) by
every way a token stops: revocation, the admin's edit form and revoke action, deletion, the owner's ban."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from portal.accounts import tokencache
from portal.accounts.models import ApiKey, NodeToken
from portal.swarm import beats


@pytest.fixture(autouse=True)
def _redis(settings) -> None:
    if not beats.enabled():
        pytest.skip("the token cache lives in the Redis cache (REDIS_URL)")
    settings.SWARM_HEARTBEAT_FAST_PATH = True


def _cached(digest: str) -> tuple[str | None, int]:
    client, cache = beats._redis()
    name = tokencache.key(cache, digest)
    value = client.get(name)
    return (None if value is None else value.decode()), client.pttl(name)


@pytest.fixture
def token(owner) -> tuple[NodeToken, str]:
    token, plain = NodeToken.create_for(owner, "alice's GPU")
    assert _cached(token.digest)[0] is None  # created, not yet used
    assert NodeToken.authenticate(plain) is not None
    return token, plain


def test_an_authenticated_token_is_cached_for_a_minute_at_most(token, owner):
    value, ttl = _cached(token[0].digest)
    assert value == f"{token[0].pk}:{owner.pk}" and 0 < ttl <= 60_000


def test_it_is_never_cached_past_its_expiry(owner):
    token, plain = NodeToken.create_for(owner, "short", expires_at=timezone.now() + timedelta(seconds=5))
    NodeToken.authenticate(plain)
    assert 0 < _cached(token.digest)[1] <= 5_000


def test_api_keys_are_not_cached(owner):
    key, plain = ApiKey.create_for(owner, "script")
    assert ApiKey.authenticate(plain) is not None
    assert _cached(key.digest)[0] is None


def test_a_revocation_buries_it_and_a_lookup_in_flight_cannot_bring_it_back(token, owner):
    secret, _ = token
    secret.revoke()
    assert _cached(secret.digest)[0] == tokencache.TOMBSTONE
    # A lookup that read the token before the revocation committed writes afterwards: the tombstone stays.
    tokencache.remember(secret.digest, secret.pk, owner.pk, None, timezone.now())
    value, ttl = _cached(secret.digest)
    assert value == tokencache.TOMBSTONE and ttl > 60_000


@pytest.mark.parametrize(
    "stop",
    [
        lambda t, u: t.delete(),
        lambda t, u: (setattr(u, "is_active", False), u.save()),
        lambda t, u: (setattr(t, "expires_at", timezone.now()), t.save()),
    ],
    ids=["token deleted", "user deactivated", "expiry edited"],
)
def test_every_way_a_token_stops_buries_it(token, owner, stop):
    stop(token[0], owner)
    assert _cached(token[0].digest)[0] == tokencache.TOMBSTONE


@pytest.fixture
def admin_client(db) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "root-password-1"))
    return client


def test_the_admins_ban_and_revoke_actions_bury_it(token, owner, admin_client):
    page = admin_client.post("/admin/accounts/nodetoken/", {"action": "revoke", "_selected_action": [token[0].pk]})
    assert page.status_code == 302 and _cached(token[0].digest)[0] == tokencache.TOMBSTONE
    other, plain = NodeToken.create_for(owner, "second")
    NodeToken.authenticate(plain)
    assert _cached(other.digest)[0] is not None
    admin_client.post("/admin/auth/user/", {"action": "ban", "_selected_action": [owner.pk]})
    assert _cached(other.digest)[0] == tokencache.TOMBSTONE
    assert NodeToken.authenticate(plain) is None


def test_saving_an_active_user_or_a_new_token_buries_nothing(token, owner):
    owner.first_name = "Alice"
    owner.save()
    NodeToken.create_for(owner, "another")
    assert _cached(token[0].digest)[0] == f"{token[0].pk}:{owner.pk}"
