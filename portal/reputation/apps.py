"""Reputation: signals about each node (uptime, step success, honesty, audits, reports) combined into a score."""

from django.apps import AppConfig


class ReputationConfig(AppConfig):
    """The ``reputation`` app."""

    name = "portal.reputation"
    label = "reputation"
