"""#17 finding 7 (accounts): a self-registered account confirms its e-mail before it may create node tokens or
API keys (so before it can run nodes and earn), one account per address; the link is signed and expires."""

import re

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from portal.accounts.models import ApiKey, NodeToken

PASSWORD = "a-long-Passphrase-9"


@pytest.fixture(autouse=True)
def _verifying(settings):
    settings.ACCOUNTS_VERIFY_EMAIL = True  # the production default (tests run as a local, DEBUG portal)


def _signup(client: Client, name: str = "mallory", email: str = "mallory@example.net"):
    body = {"username": name, "email": email, "password1": PASSWORD, "password2": PASSWORD}
    return client.post("/accounts/signup/", body)


def _link() -> str:
    return re.search(r"http://testserver(/accounts/verify/\S+/)", mail.outbox[-1].body).group(1)


def test_a_fresh_account_cannot_create_tokens_or_keys_until_it_confirms(db):
    client = Client()
    assert _signup(client).status_code == 302
    user = User.objects.get(username="mallory")
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["mallory@example.net"]
    # Straight to the token and key pages, as a script would: refused, nothing created, no 500.
    page = client.post("/contribute/", {"name": "farm"}, follow=True)
    assert page.status_code == 200 and b"confirm your e-mail" in page.content
    reply = client.post("/contribute/browser/token/")
    assert reply.status_code == 403 and reply.json()["error"] == "unverified_email"
    page = client.post("/accounts/profile/", {"name": "k"})
    assert b"confirm your e-mail" in page.content and b'id="new-api-key"' not in page.content
    assert not NodeToken.objects.filter(user=user).exists() and not ApiKey.objects.filter(user=user).exists()
    # The link from the mail unlocks it.
    assert client.get(_link()).status_code == 302
    assert client.post("/contribute/", {"name": "farm"}).status_code == 200
    assert NodeToken.objects.filter(user=user).count() == 1
    page = client.post("/accounts/profile/", {"name": "k"})
    assert b'id="new-api-key"' in page.content


def test_a_forged_or_foreign_link_does_not_verify(db):
    client = Client()
    _signup(client)
    link = _link()
    assert client.get(link[:-3] + "xx/").status_code == 400  # tampered signature
    user = User.objects.get(username="mallory")
    user.email = "other@example.net"  # a link for the old address proves nothing about the new one
    user.save()
    assert client.get(link).status_code == 400
    assert client.post("/accounts/profile/", {"name": "k"}, follow=True).content.count(b"new-api-key") == 0


def test_one_account_per_address_and_the_address_is_required(db):
    assert _signup(Client()).status_code == 302
    page = _signup(Client(), name="mallory2", email="MALLORY@example.net")
    assert page.status_code == 200 and b"already exists" in page.content
    page = _signup(Client(), name="mallory3", email="")
    assert page.status_code == 200 and not User.objects.filter(username="mallory3").exists()


def test_it_sends_the_link_again_on_request(db):
    client = Client()
    _signup(client)
    assert client.post("/accounts/verify/resend/").status_code == 302
    assert len(mail.outbox) == 2
    assert client.get(_link()).status_code == 302


def test_accounts_made_by_admins_are_trusted(owner):
    assert NodeToken.create_for(owner, "x")  # no sign-up, no verification record
