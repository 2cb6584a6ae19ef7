"""Domain functions of the portal's relay (spec §9 of ``swarmnode/protocol/README.md``).

The consumers authenticate, attach and look up nodes only through these functions.
"""

from __future__ import annotations

from django.conf import settings

from portal.accounts.models import NodeToken
from portal.relay.models import RelayedNode
from portal.swarm.models import Node


class RelayRefusal(Exception):
    """A node may not attach: ``code`` (``unauthorized``, ``key_in_use``, ``relay_full``) and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def authorize_node(token_plain: str, public_key: str, key_id: str) -> NodeToken:
    """The node token of a node asking to attach.

    Raises:
        RelayRefusal: no usable token (``unauthorized``); the key is announced by another account's
            node or attached for another token (``key_in_use``); the relay is full (``relay_full``).
    """
    token = NodeToken.authenticate(token_plain or "")
    if token is None:
        raise RelayRefusal("unauthorized", "a valid node token is required (create one on the portal)")
    if Node.objects.active().filter(public_key=public_key).exclude(owner=token.user).exists():
        raise RelayRefusal("key_in_use", "this public key is announced by another account's node")
    if RelayedNode.objects.filter(key_id=key_id).exclude(token__user=token.user).exists():
        raise RelayRefusal("key_in_use", "this key is attached for another account")
    if not RelayedNode.objects.filter(key_id=key_id).exists() and RelayedNode.objects.count() >= capacity():
        raise RelayRefusal("relay_full", f"the portal relay carries {capacity()} nodes already")
    return token


def capacity() -> int:
    """Nodes the portal relay carries at most."""
    return settings.RELAY_CAPACITY


def attach(key_id: str, public_key: str, token: NodeToken, channel_name: str) -> str:
    """Record that ``key_id`` is reached through ``channel_name``; return the channel it replaces ("" if none)."""
    old = RelayedNode.objects.filter(key_id=key_id).values_list("channel_name", flat=True).first() or ""
    RelayedNode.objects.update_or_create(
        key_id=key_id, defaults={"public_key": public_key, "token": token, "channel_name": channel_name}
    )
    return old


def detach(key_id: str, channel_name: str) -> None:
    """Forget ``key_id`` unless it re-attached on another channel meanwhile."""
    RelayedNode.objects.filter(key_id=key_id, channel_name=channel_name).delete()


def node_channel(key_id: str) -> str | None:
    """The channel of the consumer carrying ``key_id``'s link, or ``None`` when it is not attached."""
    return RelayedNode.objects.filter(key_id=key_id).values_list("channel_name", flat=True).first()


def relay_load() -> dict:
    """What the portal relay announces: attached nodes and capacity (spec §9.5)."""
    return {"nodes": RelayedNode.objects.count(), "capacity": capacity()}
