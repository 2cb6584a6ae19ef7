"""Websocket routes of the relay app.

They are served *outside* ``AllowedHostsOriginValidator`` (see ``portal/asgi.py``): nodes and
programs send no ``Origin`` header, and nothing here trusts the browser's session cookie (nodes
authenticate with a node token and a signature, clients with end-to-end encryption to the node's
key), so cross-site websocket hijacking has nothing to steal.
"""

from django.urls import path

from portal.relay.consumers import NodeLinkConsumer, RelayClientConsumer

websocket_urlpatterns = [
    path("ws/relay", NodeLinkConsumer.as_asgi()),
    path("ws/relay/", NodeLinkConsumer.as_asgi()),
    path("ws/relay/<str:key_id>", RelayClientConsumer.as_asgi()),
]
