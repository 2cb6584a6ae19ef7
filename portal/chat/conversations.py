"""Domain functions on conversations: who owns what, adding turns, the history the model sees."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from portal.chat.models import Conversation, Message
from portal.generation import Requester

TITLE_CHARS = 60
SYSTEM_PROMPT_CHARS = 4000  # a system prompt longer than this is refused (it is resent with every request)


@dataclass(frozen=True)
class Owner(Requester):
    """Whoever is chatting (a user, or an anonymous browser session), and the conversations they own."""

    def conversations(self):
        """This owner's conversations, newest first."""
        if self.user_id is not None:
            return Conversation.objects.filter(user_id=self.user_id)
        if self.session_key:
            return Conversation.objects.filter(user__isnull=True, session_key=self.session_key)
        return Conversation.objects.none()


class NotFound(LookupError):
    """No such conversation for this owner (other people's conversations look exactly the same)."""


def get_conversation(owner: Owner, conversation_id) -> Conversation:
    """``owner``'s conversation ``conversation_id``.

    Raises:
        NotFound: it does not exist or belongs to someone else.
    """
    if not isinstance(conversation_id, int) or isinstance(conversation_id, bool):
        raise NotFound("no such conversation")
    try:
        return owner.conversations().get(pk=conversation_id)
    except Conversation.DoesNotExist:
        raise NotFound("no such conversation") from None


class InvalidValue(ValueError):
    """A title or system prompt that cannot be stored as given (wrong type, too long)."""


def clean_system_prompt(value) -> str | None:
    """``value`` as a system prompt to store: None (keep the stored one) or text, stripped ("" clears it).

    Raises:
        InvalidValue: not text, or longer than :data:`SYSTEM_PROMPT_CHARS`.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidValue("system_prompt must be text")
    if len(value) > SYSTEM_PROMPT_CHARS:
        raise InvalidValue(f"the system prompt is limited to {SYSTEM_PROMPT_CHARS} characters")
    return value.strip()


@transaction.atomic
def add_question(
    owner: Owner, conversation_id: int | None, model: str, content: str, system_prompt: str | None = None
) -> tuple[Conversation, Message]:
    """Append a user message (to a new conversation when ``conversation_id`` is None).

    ``system_prompt`` (already cleaned by :func:`clean_system_prompt`) replaces the stored one unless None.

    Raises:
        NotFound: ``conversation_id`` is not the owner's.
    """
    if conversation_id is None:
        conversation = Conversation.objects.create(
            user_id=owner.user_id, session_key="" if owner.user_id else owner.session_key, model=model,
            title=_title(content), system_prompt=system_prompt or "",
        )  # fmt: skip
    else:
        conversation = get_conversation(owner, conversation_id)
        conversation.model = model
        fields = ["model", "updated_at"]
        if system_prompt is not None:
            conversation.system_prompt = system_prompt
            fields.append("system_prompt")
        conversation.save(update_fields=fields)
    return conversation, conversation.messages.create(role=Message.Role.USER, content=content)


def rename(owner: Owner, conversation_id, title) -> Conversation:
    """Give ``owner``'s conversation a new title (blank: "(untitled)").

    Raises:
        NotFound: not the owner's conversation.
        InvalidValue: the title is not text.
    """
    if not isinstance(title, str):
        raise InvalidValue("title must be text")
    conversation = get_conversation(owner, conversation_id)
    conversation.title = _title(title, limit=Conversation._meta.get_field("title").max_length)
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def delete(owner: Owner, conversation_id) -> None:
    """Delete ``owner``'s conversation and its messages.

    Raises:
        NotFound: not the owner's conversation.
    """
    get_conversation(owner, conversation_id).delete()


@transaction.atomic
def prepare_regenerate(owner: Owner, conversation_id: int, system_prompt: str | None = None) -> Conversation:
    """Remove the last answer of the conversation so that the last question is answered again.

    ``system_prompt`` (cleaned) replaces the stored one unless None.

    Raises:
        NotFound: not the owner's conversation, or it has no question yet.
    """
    conversation = get_conversation(owner, conversation_id)
    if system_prompt is not None and system_prompt != conversation.system_prompt:
        conversation.system_prompt = system_prompt
        conversation.save(update_fields=["system_prompt", "updated_at"])
    last = conversation.messages.order_by("-pk").first()
    if last is not None and last.role == Message.Role.ASSISTANT:
        last.delete()
        last = conversation.messages.order_by("-pk").first()
    if last is None or last.role != Message.Role.USER:
        raise NotFound("nothing to regenerate")
    return conversation


def history(conversation: Conversation, max_messages: int, max_chars: int) -> tuple[list[dict], int]:
    """The newest turns of the conversation as chat-template messages, oldest first, within the limits,
    after the conversation's system prompt (if any) as the first, system, message.

    Returns:
        the messages, and how many older ones did not fit (the prompt may drop more to fit the context).
    """
    turns = list(conversation.messages.order_by("-pk").values_list("role", "content")[: max_messages + 1])
    kept: list[dict] = []
    chars = 0
    for role, content in turns[:max_messages]:
        if kept and chars + len(content) > max_chars:
            break
        kept.append({"role": role, "content": content})
        chars += len(content)
    kept.reverse()
    while len(kept) > 1 and kept[0]["role"] != "user":
        kept.pop(0)
    dropped = conversation.messages.count() - len(kept)
    if conversation.system_prompt:
        kept.insert(0, {"role": "system", "content": conversation.system_prompt})
    return kept, dropped


def add_answer(conversation: Conversation, text: str, **stats) -> Message:
    """Store the model's answer (also a partial one, when the user pressed Stop)."""
    message = conversation.messages.create(role=Message.Role.ASSISTANT, content=text, **stats)
    conversation.save(update_fields=["updated_at"])
    return message


def _title(content: str, limit: int = TITLE_CHARS) -> str:
    words = " ".join(content.split())
    return words if len(words) <= limit else words[: limit - 1].rstrip() + "…"
