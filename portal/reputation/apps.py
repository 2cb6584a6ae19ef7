"""Reputation: signals about each node (uptime, step success, honesty, audits, reports) combined into a score."""

from django.apps import AppConfig


class ReputationConfig(AppConfig):
    """The ``reputation`` app."""

    name = "portal.reputation"
    label = "reputation"
    verbose_name = "Reputation"

    def ready(self) -> None:
        from portal.reputation import checks  # noqa: F401  (registers the system checks)
