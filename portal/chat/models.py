"""Conversations kept per user (or per anonymous browser session) and their messages."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Reservation(models.Model):
    """Tokens held for one generation from admission until the gateway settles what it generated.

    Kept by ``portal.generation.reservations`` (which looks the model up by name: nothing imports ``chat``).
    """

    class State(models.TextChoices):
        OPEN = "open"  # admitted, no gateway has it yet
        RUNNING = "running"  # a gateway claimed it
        SETTLED = "settled"  # charged ``used`` tokens (0: released)

    reference = models.CharField(max_length=80, unique=True)  # the charge's idempotency key
    user_id = models.IntegerField(null=True, blank=True, db_index=True)
    session_key = models.CharField(max_length=64, blank=True, db_index=True)
    ip = models.CharField(max_length=64, blank=True, db_index=True)
    tokens = models.PositiveIntegerField()  # held: the request's token budget
    used = models.PositiveIntegerField(default=0)  # charged at settlement
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "created_at"])]

    def __str__(self) -> str:
        return f"{self.reference}: {self.used}/{self.tokens} {self.state}"


class Conversation(models.Model):
    """One chat: a model, a title (the first words of the first question, or the owner's), an optional
    system prompt and its messages in order.

    Owned by a user, or, for an anonymous visitor, by the Django session that started it.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="conversations"
    )
    session_key = models.CharField(max_length=64, blank=True, db_index=True)  # anonymous owner
    model = models.CharField(max_length=64)
    title = models.CharField(max_length=120, blank=True)
    # Sent to the model as the first (system) message of every request of this conversation; "" for none.
    system_prompt = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-pk"]

    def __str__(self) -> str:
        return self.title or f"conversation {self.pk}"


class Message(models.Model):
    """A turn: the user's question or the model's answer (with how it ended and how fast it came)."""

    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    # Answers only: "stop" (EOS or a stop string), "length", "cancelled" (Stop pressed), "error".
    finish_reason = models.CharField(max_length=16, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    tokens_per_s = models.FloatField(default=0.0)
    dropped_messages = models.PositiveIntegerField(default=0)  # oldest turns left out of the prompt

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"

    def as_dict(self) -> dict:
        """What the chat page and the websocket show of a message."""
        return {
            "id": self.pk,
            "role": self.role,
            "content": self.content,
            "finish_reason": self.finish_reason,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "dropped_messages": self.dropped_messages,
        }
