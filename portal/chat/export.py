"""A conversation written out for its owner: Markdown to read, JSON to process (``/chat/<id>/export.md|json``)."""

from __future__ import annotations

from portal.chat.models import Conversation

FORMAT_VERSION = 1


def as_json(conversation: Conversation) -> dict:
    """The conversation as plain data: title, model, system prompt and every message with its stats."""
    return {
        "format": "layerswarm.conversation",
        "version": FORMAT_VERSION,
        "id": conversation.pk,
        "title": conversation.title,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "messages": [
            {**m.as_dict(), "created_at": m.created_at.isoformat(), "prompt_tokens": m.prompt_tokens}
            for m in conversation.messages.all()
        ],
    }


def as_markdown(conversation: Conversation) -> str:
    """The conversation as a Markdown document: a heading per turn, the answers as the model wrote them."""
    lines = [f"# {_one_line(conversation.title) or '(untitled)'}", "", f"Model: `{conversation.model}`", ""]
    if conversation.system_prompt:
        lines += ["## System prompt", "", conversation.system_prompt, ""]
    for message in conversation.messages.all():
        heading = {"user": "You", "assistant": "Assistant", "system": "System"}.get(message.role, message.role)
        if message.finish_reason and message.finish_reason != "stop":
            heading += f" ({message.finish_reason})"
        lines += [f"## {heading}", "", message.content, ""]
    return "\n".join(lines)


def filename(conversation: Conversation, extension: str) -> str:
    """A safe download name: ``conversation-<id>.<extension>`` (titles may hold anything)."""
    return f"conversation-{conversation.pk}.{extension}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
