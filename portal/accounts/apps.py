"""Accounts: users, API keys for programs, node tokens for machines."""

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """The ``accounts`` app."""

    name = "portal.accounts"
    label = "accounts"

    def ready(self) -> None:
        from portal.accounts import tokencache

        tokencache.connect()  # the heartbeat fast path's token cache follows revocations and bans
