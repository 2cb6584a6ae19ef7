"""Signal receivers: every new user gets an account with the starting grant."""

from __future__ import annotations

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="ledger-open-account")
def open_account_with_grant(sender, instance, created, raw=False, **kwargs):
    """Open the new user's account, which posts the starting grant (``LEDGER_STARTING_GRANT``)."""
    if created and not raw:
        from portal.ledger.books import user_account

        user_account(instance)
