"""ASGI entry point (daphne): HTTP through Django; websockets through Channels (the live health map;
chat and relay add theirs)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from portal.chat.routing import websocket_urlpatterns as chat_ws  # noqa: E402
from portal.middleware import ForwardedClientASGI  # noqa: E402
from portal.relay.routing import websocket_urlpatterns as relay_ws  # noqa: E402
from portal.swarm.routing import websocket_urlpatterns as swarm_ws  # noqa: E402

websocket_urlpatterns = [*swarm_ws, *chat_ws]

browser_websockets = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
# Nodes and programs send no Origin header; the relay uses no cookies (see portal/relay/routing.py).
relay_websockets = URLRouter(relay_ws)


async def websocket_application(scope, receive, send):
    """Route ``/ws/relay...`` around the origin check, everything else through it."""
    if scope["path"].startswith("/ws/relay"):
        return await relay_websockets(scope, receive, send)
    return await browser_websockets(scope, receive, send)


# The visitor's address (not the proxy's) in scope["client"] for HTTP and websockets: portal/middleware.py.
application = ForwardedClientASGI(ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_application}))
