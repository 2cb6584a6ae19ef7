"""Django's standard middleware, pinned to synchronous mode.

Under ASGI, Django runs each async-capable ``MiddlewareMixin`` middleware's hooks through
``sync_to_async``: two thread hand-offs per middleware per request, ~17 in all for this stack. The
portal's views are synchronous (DRF), so running the whole chain in one worker thread is simpler
and much cheaper (the tracker's heartbeat load benchmark measures it). Websockets (Channels) do not
go through Django middleware and are unaffected.

The classes keep their dotted paths in ``MIDDLEWARE`` so that ``check --deploy`` still recognises
them; :func:`pin_sync_mode` runs from ``PortalConfig.ready``, before any handler loads middleware.
"""

import ipaddress
from functools import lru_cache

from csp.middleware import CSPMiddleware
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django_prometheus.middleware import PrometheusAfterMiddleware, PrometheusBeforeMiddleware

SYNC_ONLY = (
    SecurityMiddleware,
    SessionMiddleware,
    CommonMiddleware,
    CsrfViewMiddleware,
    AuthenticationMiddleware,
    MessageMiddleware,
    XFrameOptionsMiddleware,
    CSPMiddleware,
    PrometheusBeforeMiddleware,
    PrometheusAfterMiddleware,
)


def pin_sync_mode() -> None:
    """Mark the standard middleware sync-only, so Django chains them in one thread under ASGI."""
    for cls in SYNC_ONLY:
        cls.async_capable = False


# -- the client's address behind a reverse proxy ------------------------------------------------------------
# Per-address limits (anonymous quota, sign-up and login rate limits) must key on the visitor, not on nginx.
# X-Forwarded-For is written by whoever sends the request, so it is believed only hop by hop, from the right,
# while the hop that handed it to us is a proxy listed in TRUSTED_PROXIES: anything left of the first
# untrusted hop is the visitor's own claim and is ignored.


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue  # reported by the system check portal.E004; never a reason to trust more
    return tuple(networks)


def _trusted(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str, forwarded_for: str = "", real_ip: str = "", trusted_proxies=None) -> str:
    """The visitor's IP address: ``peer`` (the socket's far end) unless a trusted proxy forwarded the request.

    Args:
        peer: the address the connection came from.
        forwarded_for: the ``X-Forwarded-For`` header (``client, proxy1, proxy2``), or "".
        real_ip: the ``X-Real-IP`` header, or "" (used when a trusted proxy sent no X-Forwarded-For).
        trusted_proxies: CIDRs of our own proxies (default: the ``TRUSTED_PROXIES`` setting).

    Returns:
        The rightmost address not belonging to a trusted proxy; a malformed forwarded entry stops the walk
        at the last trusted hop, never at an address the visitor wrote.
    """
    networks = _networks(tuple(settings.TRUSTED_PROXIES if trusted_proxies is None else trusted_proxies))
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()] or [real_ip.strip()]
    address = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address  # garbage from the visitor (or no header): the last proxy is all we know
        address = hop
        if not _trusted(hop, networks):
            return hop
    return address


class ClientAddressMiddleware:
    """Sets ``REMOTE_ADDR`` to :func:`client_address`, so every per-IP check sees the visitor (not nginx).

    Under daphne :class:`ForwardedClientASGI` has already done it (this pass then changes nothing); this
    covers WSGI servers and Django's test client.
    """

    sync_capable, async_capable = True, False

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        meta = request.META
        meta["REMOTE_ADDR"] = client_address(
            meta.get("REMOTE_ADDR", ""), meta.get("HTTP_X_FORWARDED_FOR", ""), meta.get("HTTP_X_REAL_IP", "")
        )
        return self.get_response(request)


class ForwardedClientASGI:
    """ASGI middleware: rewrites ``scope["client"]`` for HTTP and websockets with :func:`client_address`.

    Django's ``REMOTE_ADDR`` and Channels consumers (``scope["client"]``) both read it, so one place decides.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope.get("client"):
            headers = {k.lower(): v for k, v in scope.get("headers") or [] if k.lower() in _FORWARD_HEADERS}
            host, port = scope["client"][0], scope["client"][1]
            forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1")
            real_ip = headers.get(b"x-real-ip", b"").decode("latin-1")
            address = client_address(str(host), forwarded, real_ip)
            if address != host:
                scope = {**scope, "client": [address, port]}
        return await self.app(scope, receive, send)


_FORWARD_HEADERS = (b"x-forwarded-for", b"x-real-ip")
