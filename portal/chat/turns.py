"""A chat turn: the question stored and admitted for generation, then the answer stored and paid for.

Synchronous (database) functions; the chat consumer calls them through ``database_sync_to_async``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from portal.chat import conversations
from portal.chat.conversations import InvalidValue, NotFound, Owner
from portal.chat.models import Conversation, Message
from portal.generation import BadRequest, GenerationRequest, admit, retry_when_locked


@dataclass
class Question:
    """A question ready for the gateway: where it is stored, and the older messages left out of the request."""

    conversation: Conversation
    message: Message | None  # None: a regenerated answer to the last stored question
    dropped: int


def ask(
    owner: Owner, conversation_id, request: GenerationRequest, text, regenerate: bool, ip: str, system_prompt=None
) -> Question:
    """Store the question (or drop the answer to regenerate), fill in ``request.messages`` with the
    conversation's history (after its system prompt, which ``system_prompt`` replaces unless None) and
    admit it for ``owner`` (which holds the credits it may use).

    Raises:
        UnknownModel, OutOfCredits, TooManyGenerations: from :func:`portal.generation.admit` (nothing is stored).
        BadRequest: ``system_prompt`` is not text or too long (``param`` "system_prompt").
        NotFound: not the owner's conversation, or nothing to regenerate.
    """
    try:
        system_prompt = conversations.clean_system_prompt(system_prompt)
    except InvalidValue as exc:
        raise BadRequest(str(exc), "system_prompt") from None
    with transaction.atomic():  # a refused admission stores nothing
        if regenerate:
            conversation = conversations.prepare_regenerate(owner, conversation_id, system_prompt)
            question = None
        else:
            if conversation_id is not None and not isinstance(conversation_id, int):
                raise NotFound("no such conversation")
            conversation, question = conversations.add_question(
                owner, conversation_id, request.model, text, system_prompt
            )
        limits = (settings.CHAT_MAX_MESSAGES, settings.CHAT_MAX_INPUT_CHARS)
        request.messages, dropped = conversations.history(conversation, *limits)
        admit(owner, request, ip)  # after the history: the hold covers the prompt actually sent
    return Question(conversation, question, dropped)


@retry_when_locked
def answer(conversation_id: int, text: str, **stats):
    """Store the answer (a partial one when the user pressed Stop or the gateway died).

    The gateway charges what it generated (``portal.generation.reservations``), whether or not anyone is
    still there to store the answer.
    """
    conversation = Conversation.objects.get(pk=conversation_id)
    return conversations.add_answer(conversation, text, **stats)


@retry_when_locked
def record_stopped_usage(message_id: int, usage: dict | None) -> None:
    """The gateway's usage report of an answer the user stopped: record the counts on the stored answer."""
    usage = usage or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    Message.objects.filter(pk=message_id).update(prompt_tokens=prompt, completion_tokens=completion)
