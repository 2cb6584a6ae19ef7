"""A chat turn: the question stored and admitted for generation, then the answer stored and paid for.

Synchronous (database) functions; the chat consumer calls them through ``database_sync_to_async``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from portal.chat import conversations
from portal.chat.conversations import NotFound, Owner
from portal.chat.models import Conversation, Message
from portal.generation import GenerationRequest, admit, settle


@dataclass
class Question:
    """A question ready for the gateway: where it is stored, and the older messages left out of the request."""

    conversation: Conversation
    message: Message | None  # None: a regenerated answer to the last stored question
    dropped: int


def ask(owner: Owner, conversation_id, request: GenerationRequest, text, regenerate: bool, ip: str) -> Question:
    """Admit ``request`` for ``owner``, store the question (or drop the answer to regenerate) and fill in
    ``request.messages`` with the conversation's history.

    Raises:
        UnknownModel, OutOfCredits: from :func:`portal.generation.admit` (nothing is stored).
        NotFound: not the owner's conversation, or nothing to regenerate.
    """
    admit(owner, request, ip)
    if regenerate:
        conversation = conversations.prepare_regenerate(owner, conversation_id)
        question = None
    else:
        if conversation_id is not None and not isinstance(conversation_id, int):
            raise NotFound("no such conversation")
        conversation, question = conversations.add_question(owner, conversation_id, request.model, text)
    history, dropped = conversations.history(conversation, settings.CHAT_MAX_MESSAGES, settings.CHAT_MAX_INPUT_CHARS)
    request.messages = history
    return Question(conversation, question, dropped)


def answer(owner: Owner, ip: str, conversation_id: int, request_id: str, text: str, usage: dict | None, **stats):
    """Store the answer (a partial one when the user pressed Stop) and charge the usage the gateway reported."""
    conversation = Conversation.objects.get(pk=conversation_id)
    message = conversations.add_answer(conversation, text, **stats)
    settle(owner, ip, usage, f"chat:{request_id}")
    return message


def record_stopped_usage(owner: Owner, ip: str, message_id: int, request_id: str, usage: dict | None) -> None:
    """The gateway's usage report of an answer the user stopped: record the counts and charge them."""
    usage = usage or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    Message.objects.filter(pk=message_id).update(prompt_tokens=prompt, completion_tokens=completion)
    settle(owner, ip, usage, f"chat:{request_id}")
