"""Relay: the /ws/relay/ consumer that forwards frames between clients and nodes behind NAT."""

from django.apps import AppConfig


class RelayConfig(AppConfig):
    """The ``relay`` app."""

    name = "portal.relay"
    label = "relay"
