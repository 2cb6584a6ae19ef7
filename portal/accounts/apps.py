"""Accounts: users, API keys for programs, node tokens for machines."""

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """The ``accounts`` app."""

    name = "portal.accounts"
    label = "accounts"
