"""Chat: conversations kept per user, the /ws/chat/ consumer, and the gateway that runs swarm client sessions."""

from django.apps import AppConfig


class ChatConfig(AppConfig):
    """The ``chat`` app."""

    name = "portal.chat"
    label = "chat"
