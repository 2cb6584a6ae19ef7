"""Under ASGI the middleware runs in sync mode (one thread hand-off per request), and still runs."""

import json
import re

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator

from portal.asgi import application
from portal.middleware import SYNC_ONLY, ClientAddressMiddleware, ForwardedClientASGI, client_address

urlpatterns: list = []  # the probe view of one test (ROOT_URLCONF points here)


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


# -- the visitor's address behind nginx (#17 finding 9) ----------------------------------------------------------

PROXY = "10.0.0.5"


@pytest.mark.parametrize(
    "peer, forwarded, real_ip, expected",
    [
        ("203.0.113.9", "1.2.3.4", "", "203.0.113.9"),  # a stranger names any address: ignored
        ("203.0.113.9", "", "1.2.3.4", "203.0.113.9"),
        (PROXY, "198.51.100.7", "", "198.51.100.7"),  # nginx says who connected to it: believed
        (PROXY, "", "198.51.100.7", "198.51.100.7"),
        (PROXY, "6.6.6.6, 198.51.100.7", "", "198.51.100.7"),  # the visitor's own X-Forwarded-For: ignored
        (PROXY, "6.6.6.6, 198.51.100.7, 10.0.0.9", "", "198.51.100.7"),  # two of our proxies in a row
        (PROXY, "not-an-ip", "", PROXY),  # garbage: the proxy is all we know
        (PROXY, "", "", PROXY),
    ],
)
def test_it_believes_forwarded_addresses_only_from_trusted_proxies(settings, peer, forwarded, real_ip, expected):
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    assert client_address(peer, forwarded, real_ip) == expected


def test_it_trusts_no_one_by_default(settings):
    settings.TRUSTED_PROXIES = []
    assert client_address("127.0.0.1", "1.2.3.4", "5.6.7.8") == "127.0.0.1"


async def _seen_client(scope_type: str, peer: str, headers: list[tuple[bytes, bytes]]):
    seen = {}

    async def app(scope, receive, send):
        seen["client"] = scope["client"]

    await ForwardedClientASGI(app)({"type": scope_type, "client": [peer, 5555], "headers": headers}, None, None)
    return seen["client"][0]


@pytest.mark.parametrize("scope_type", ["http", "websocket"])
def test_it_rewrites_the_asgi_client_for_http_and_websockets(settings, scope_type):
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    spoof = [(b"X-Forwarded-For", b"1.2.3.4")]
    assert async_to_sync(_seen_client)(scope_type, "203.0.113.9", spoof) == "203.0.113.9"
    assert async_to_sync(_seen_client)(scope_type, PROXY, spoof) == "1.2.3.4"
    assert async_to_sync(_seen_client)(scope_type, PROXY, [(b"x-real-ip", b"1.2.3.5")]) == "1.2.3.5"


def test_the_portal_application_is_wrapped():
    assert isinstance(application, ForwardedClientASGI)


@pytest.mark.django_db(transaction=True)
def test_a_spoofed_forwarded_for_does_not_reach_django_over_asgi(settings, smollm2):
    # Over the real ASGI app: the anonymous chat page keys its quota on REMOTE_ADDR; a direct visitor who
    # names another address must still be seen as itself.
    from django.http import JsonResponse
    from django.urls import path

    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    settings.ROOT_URLCONF = __name__

    async def get(peer: str):
        scope_headers = [(b"host", b"127.0.0.1"), (b"x-forwarded-for", b"1.2.3.4")]
        communicator = HttpCommunicator(application, "GET", "/whoami/", headers=scope_headers)
        communicator.scope["client"] = [peer, 4000]
        return await communicator.get_response(timeout=10)

    global urlpatterns
    urlpatterns = [path("whoami/", lambda request: JsonResponse({"ip": request.META["REMOTE_ADDR"]}))]
    assert json.loads(async_to_sync(get)("203.0.113.9")["body"]) == {"ip": "203.0.113.9"}
    assert json.loads(async_to_sync(get)(PROXY)["body"]) == {"ip": "1.2.3.4"}


def test_the_django_middleware_applies_the_same_rule(settings):
    from django.test import RequestFactory

    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    middleware = ClientAddressMiddleware(lambda request: request.META["REMOTE_ADDR"])
    factory = RequestFactory()
    assert middleware(factory.get("/", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="1.2.3.4")) == "203.0.113.9"
    assert middleware(factory.get("/", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="1.2.3.4")) == "1.2.3.4"


# -- Content-Security-Policy (#17 finding 17) ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/", "/chat/", "/swarm/", "/accounts/login/"])
def test_every_page_carries_a_content_security_policy(client, smollm2, url):
    policy = client.get(url)["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    # An injected <script> or inline handler does not run: scripts only from our origin, no 'unsafe-inline'.
    assert directives["script-src"] == "'self' 'wasm-unsafe-eval'"
    assert "unsafe-inline" not in policy and "unsafe-eval'" not in policy.replace("wasm-unsafe-eval'", "")
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"


def test_the_templates_need_no_inline_code():
    # What the policy would block: inline <script> bodies, event-handler attributes, style attributes or blocks.
    from pathlib import Path

    inline = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>|\son[a-z]+=|\sstyle=|<style", re.I)
    templates = Path(__file__).resolve().parents[2] / "portal" / "templates"
    offenders = [str(p) for p in templates.rglob("*.html") if inline.search(p.read_text())]
    assert offenders == []
