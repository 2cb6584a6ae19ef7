"""Under ASGI the middleware runs in sync mode (one thread hand-off per request), and still runs."""

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator

from portal.asgi import application
from portal.middleware import SYNC_ONLY


def test_it_pins_the_standard_middleware_to_sync_mode():
    assert all(cls.async_capable is False for cls in SYNC_ONLY)


@pytest.mark.django_db(transaction=True)
def test_it_still_applies_the_middleware_over_asgi(smollm2):
    async def get():
        communicator = HttpCommunicator(application, "GET", "/api/v1/models/", headers=[(b"host", b"127.0.0.1")])
        return await communicator.get_response(timeout=10)

    response = async_to_sync(get)()
    headers = dict(response["headers"])
    assert response["status"] == 200
    assert headers[b"X-Frame-Options"] == b"DENY"  # clickjacking middleware ran
    assert b"X-Content-Type-Options" in headers  # security middleware ran
