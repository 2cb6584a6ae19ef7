"""Sign up, log in and out, profile with API keys shown once, stored hashed, revocable."""

from django.contrib.auth.models import User
from django.test import Client

from portal.accounts import bearer
from portal.accounts.models import ApiKey


def test_it_signs_up_and_lands_on_contribute(db):
    client = Client()
    response = client.post(
        "/accounts/signup/",
        {"username": "carol", "email": "", "password1": "a-long-Passphrase-9", "password2": "a-long-Passphrase-9"},
    )
    assert response.status_code == 302 and response.url == "/contribute/"
    assert User.objects.filter(username="carol").exists()
    assert client.get("/contribute/").status_code == 200


def test_it_refuses_a_signup_with_mismatched_passwords(db):
    response = Client().post(
        "/accounts/signup/", {"username": "carol", "password1": "a-long-Passphrase-9", "password2": "different-9"}
    )
    assert response.status_code == 200
    assert not User.objects.filter(username="carol").exists()


def test_it_logs_in_and_out(owner):
    client = Client()
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 302
    assert client.get("/accounts/profile/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/accounts/profile/").status_code == 302


def test_it_shows_a_new_api_key_once_and_stores_only_its_digest(owner):
    client = Client()
    client.force_login(owner)
    page = client.post("/accounts/profile/", {"name": "my script"}).content.decode()
    key = ApiKey.objects.get(user=owner)
    plain = page.split('id="new-api-key">')[1].split("<")[0]
    assert plain.startswith(f"lsk_{key.prefix}_")
    assert key.digest == bearer.digest(plain) and plain not in (key.digest, key.prefix)
    assert plain not in client.get("/accounts/profile/").content.decode()  # never shown again
    assert ApiKey.authenticate(plain) == key


def test_it_revokes_only_the_users_own_api_keys(owner, other, owner_api_key):
    key = ApiKey.objects.get(user=owner)
    url = f"/accounts/api-keys/{key.pk}/revoke/"
    anon = Client()
    assert anon.post(url).status_code == 302  # to the log-in page
    intruder = Client()
    intruder.force_login(other)
    assert intruder.post(url).status_code == 404
    assert ApiKey.authenticate(owner_api_key) is not None
    me = Client()
    me.force_login(owner)
    assert me.get(url).status_code == 405  # revoking takes a POST
    assert me.post(url).status_code == 302
    assert ApiKey.authenticate(owner_api_key) is None


def test_it_requires_log_in_for_the_profile(db):
    response = Client().get("/accounts/profile/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")
