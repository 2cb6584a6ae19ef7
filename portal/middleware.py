"""Django's standard middleware, pinned to synchronous mode.

Under ASGI, Django runs each async-capable ``MiddlewareMixin`` middleware's hooks through
``sync_to_async``: two thread hand-offs per middleware per request, ~17 in all for this stack. The
portal's views are synchronous (DRF), so running the whole chain in one worker thread is simpler
and much cheaper (the tracker's heartbeat load benchmark measures it). Websockets (Channels) do not
go through Django middleware and are unaffected.

The classes keep their dotted paths in ``MIDDLEWARE`` so that ``check --deploy`` still recognises
them; :func:`pin_sync_mode` runs from ``PortalConfig.ready``, before any handler loads middleware.
"""

from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware

SYNC_ONLY = (
    SecurityMiddleware,
    SessionMiddleware,
    CommonMiddleware,
    CsrfViewMiddleware,
    AuthenticationMiddleware,
    MessageMiddleware,
    XFrameOptionsMiddleware,
)


def pin_sync_mode() -> None:
    """Mark the standard middleware sync-only, so Django chains them in one thread under ASGI."""
    for cls in SYNC_ONLY:
        cls.async_capable = False
