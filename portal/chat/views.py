"""The chat page: the conversation list, the chosen conversation, and the websocket client that drives it."""

from __future__ import annotations

from django.conf import settings
from django.http import Http404
from django.shortcuts import render

from portal.chat.conversations import NotFound, Owner, get_conversation
from portal.generation import OutOfCredits, tokens_allowed
from portal.swarm.health import swarm_health


def chat(request, pk: int | None = None):
    """``/chat/`` (a new conversation) and ``/chat/<id>/`` (one of yours; anyone else's is a 404)."""
    if not request.session.session_key:
        request.session.save()  # anonymous visitors keep their conversations (and quota) by session
    owner = Owner.of(request.user, request.session.session_key)
    conversation = None
    if pk is not None:
        try:
            conversation = get_conversation(owner, pk)
        except NotFound:
            raise Http404("no such conversation") from None
    try:
        left = tokens_allowed(owner, request.META.get("REMOTE_ADDR", ""))
    except OutOfCredits:
        left = 0
    models = [{"name": m["model"], "covered": m["covered"], "banner": m["banner"]} for m in swarm_health()["models"]]
    state = {
        "conversation": (
            {"id": conversation.pk, "title": conversation.title, "model": conversation.model} if conversation else None
        ),
        "messages": [m.as_dict() for m in conversation.messages.all()] if conversation else [],
        "models": models,
        "defaults": {
            "model": conversation.model if conversation else settings.CHAT_DEFAULT_MODEL,
            "temperature": 0.7,
            "top_p": 1.0,
            "max_new_tokens": settings.CHAT_DEFAULT_MAX_NEW_TOKENS,
            "max_new_tokens_limit": settings.CHAT_MAX_NEW_TOKENS,
        },
        "tokens_left": left,
        "anonymous": not request.user.is_authenticated,
    }
    context = {"conversations": owner.conversations()[:100], "conversation": conversation, "state": state}
    return render(request, "chat/chat.html", context)
