"""Which node is attached to the portal's relay, and on which Channels consumer (any daphne worker)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from portal.accounts.models import NodeToken


class RelayedNode(models.Model):
    """A node behind NAT attached to ``/ws/relay``: clients reach it at ``/ws/relay/<key_id>``.

    ``channel_name`` is the node link consumer's Channels name; with the Redis channel layer the client's
    consumer may run on another daphne worker and still forward frames to it.
    """

    key_id = models.CharField(max_length=32, unique=True)  # swarmnode.trust.secure_channel.key_id of its public keys
    public_key = models.CharField(max_length=512)
    token = models.ForeignKey(NodeToken, on_delete=models.CASCADE, related_name="relayed_nodes")
    channel_name = models.CharField(max_length=200)
    attached_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["attached_at"]

    def __str__(self) -> str:
        return f"relayed node {self.key_id}"
