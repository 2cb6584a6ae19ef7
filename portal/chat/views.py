"""The chat page: the conversation list, the chosen conversation, and the websocket client that drives it."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from portal.chat import conversations, export
from portal.chat.conversations import InvalidValue, NotFound, Owner, get_conversation
from portal.chat.libraries import library_file
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
    models = [
        {"name": m["model"], "covered": m["covered"], "banner": m["banner"]}
        for m in swarm_health()["models"]
        if m["kind"] == "chat"  # a completion or embedding model cannot answer a conversation
    ]
    state = {
        "conversation": (
            {
                "id": conversation.pk,
                "title": conversation.title,
                "model": conversation.model,
                "system_prompt": conversation.system_prompt,
            }
            if conversation
            else None
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


def _owner(request) -> Owner:
    return Owner.of(request.user, request.session.session_key)


def _owned(request, pk: int):
    """``request``'s owner's conversation ``pk``; anyone else's (or a missing one) is a 404."""
    try:
        return get_conversation(_owner(request), pk)
    except NotFound:
        raise Http404("no such conversation") from None


@require_POST
def rename(request, pk: int):
    """``POST /chat/<id>/rename/`` (``title``): rename one of your conversations."""
    try:
        conversations.rename(_owner(request), pk, request.POST.get("title", ""))
    except NotFound:
        raise Http404("no such conversation") from None
    except InvalidValue as exc:
        messages.error(request, str(exc))
    return redirect("chat:conversation", pk)


@require_POST
def delete(request, pk: int):
    """``POST /chat/<id>/delete/``: delete one of your conversations and its messages."""
    try:
        conversations.delete(_owner(request), pk)
    except NotFound:
        raise Http404("no such conversation") from None
    messages.success(request, "Conversation deleted.")
    return redirect("chat:chat")


@require_GET
def export_conversation(request, pk: int, fmt: str):
    """``/chat/<id>/export.md`` and ``/chat/<id>/export.json``: one of your conversations, as a download."""
    if fmt not in ("md", "json"):
        raise Http404("export as .md or .json")
    conversation = _owned(request, pk)
    if fmt == "md":
        response = HttpResponse(export.as_markdown(conversation), content_type="text/markdown; charset=utf-8")
    else:
        body = json.dumps(export.as_json(conversation), ensure_ascii=False, indent=2)
        response = HttpResponse(body, content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{export.filename(conversation, fmt)}"'
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
def library(request, name: str):
    """``/chat/lib/<name>``: one of the chat's npm libraries (:mod:`portal.chat.libraries`)."""
    found = library_file(name)
    if found is None:
        raise Http404("not a chat library")
    path, content_type = found
    response = FileResponse(open(path, "rb"), content_type=content_type)  # noqa: SIM115 - closed by Django
    response["Cache-Control"] = "public, max-age=86400"
    response["X-Content-Type-Options"] = "nosniff"
    return response
