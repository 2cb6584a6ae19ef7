"""Each chat owner gets its own salt for the nodes' prompt-prefix reuse (wire spec §4.9)."""

import pytest

from portal.chat.conversations import Owner
from portal.generation import BadRequest, GenerationRequest


def test_an_owner_keeps_one_salt_and_no_two_owners_share_one(settings):
    salts = {Owner(1).prefix_salt, Owner(2).prefix_salt, Owner(None, "abc").prefix_salt, Owner(None, "abd").prefix_salt}
    assert len(salts) == 4 and all(len(s) == 32 for s in salts)
    assert Owner(1).prefix_salt == Owner(1).prefix_salt
    assert Owner(None, "").prefix_salt == ""  # nobody known: no reuse across requests
    settings.SECRET_KEY = "another deployment"
    assert Owner(1).prefix_salt not in salts  # not guessable from the user id alone


def test_the_salt_travels_to_the_gateway_and_is_checked_there():
    request = GenerationRequest(model="m", prompt="hi", prefix_salt="s" * 32)
    assert GenerationRequest.from_message(request.to_message()).prefix_salt == "s" * 32
    for bad in ("s" * 129, 5):
        with pytest.raises(BadRequest, match="prefix_salt"):
            GenerationRequest.from_message({**request.to_message(), "prefix_salt": bad})
