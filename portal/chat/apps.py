"""Chat: conversations kept per user, the /ws/chat/ consumer, and the gateway that runs swarm client sessions."""

from django.apps import AppConfig


class ChatConfig(AppConfig):
    """The ``chat`` app."""

    name = "portal.chat"
    label = "chat"

    def ready(self) -> None:
        """Register the system checks."""
        from portal.chat import checks  # noqa: F401
