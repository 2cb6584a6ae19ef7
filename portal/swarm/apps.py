"""Swarm: the models the swarm serves, its nodes and their spans, heartbeats and health."""

from django.apps import AppConfig


class SwarmConfig(AppConfig):
    """The ``swarm`` app."""

    name = "portal.swarm"
    label = "swarm"
