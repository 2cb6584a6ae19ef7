"""``manage.py create_api_key USERNAME`` prints a working key."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from portal.accounts.models import ApiKey


def test_it_prints_a_new_api_key(owner):
    out = StringIO()
    call_command("create_api_key", "alice", stdout=out)
    plain = out.getvalue().strip()
    assert ApiKey.authenticate(plain).user == owner


def test_it_refuses_an_unknown_user(db):
    with pytest.raises(CommandError, match="no user"):
        call_command("create_api_key", "nobody")
