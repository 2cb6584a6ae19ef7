"""System checks for the ledger settings (``manage.py check``)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_ledger_settings(app_configs, **kwargs):
    """Prices, grants and quotas are not negative; periods are positive; the escrow score lies in [0, 1]."""
    errors = []
    for name in (
        "LEDGER_STARTING_GRANT",
        "LEDGER_CREDITS_PER_TOKEN",
        "LEDGER_ANONYMOUS_QUOTA_TOKENS",
        "LEDGER_ESCROW_MIN_AGE",
        "LEDGER_LINK_WINDOW",
    ):
        if getattr(settings, name) < 0:
            errors.append(Error(f"{name} must not be negative", id="ledger.E001"))
    for name in (
        "LEDGER_ANONYMOUS_QUOTA_WINDOW",
        "LEDGER_RECEIPT_MAX_AGE",
        "LEDGER_SETTLE_EVERY",
        "LEDGER_ESCROW_EVERY",
        "LEDGER_MIN_PAYOUT",
    ):
        if getattr(settings, name) <= 0:
            errors.append(Error(f"{name} must be positive", id="ledger.E002"))
    if not 0.0 <= settings.LEDGER_ESCROW_RELEASE_SCORE <= 1.0:
        errors.append(Error("LEDGER_ESCROW_RELEASE_SCORE must lie in [0, 1]", id="ledger.E003"))
    return errors
