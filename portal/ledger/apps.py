"""Ledger: double-entry credits, signed usage receipts, settlement, payouts."""

from django.apps import AppConfig


class LedgerConfig(AppConfig):
    """The ``ledger`` app."""

    name = "portal.ledger"
    label = "ledger"
    verbose_name = "Ledger"

    def ready(self):
        from portal.ledger import checks, signals  # noqa: F401  (registers the system checks and receivers)
