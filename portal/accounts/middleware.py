"""Turns :class:`~portal.accounts.models.Unverified` (an account that has not confirmed its e-mail tried to create
a node token or API key) into a clear answer on whichever page or endpoint tried: never a 500."""

from __future__ import annotations

from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import redirect

from portal.accounts.models import Unverified


class UnverifiedAccountMiddleware:
    """403 JSON for programs and in-page scripts; for pages, a message and the profile (with "send the link again")."""

    sync_capable, async_capable = True, False

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, Unverified):
            return None
        wants_json = request.path_info.startswith(("/api/", "/v1/")) or request.path_info.endswith("/token/")
        if wants_json or "application/json" in request.META.get("HTTP_ACCEPT", ""):
            return JsonResponse({"error": "unverified_email", "detail": str(exception)}, status=403)
        messages.error(request, str(exception))
        return redirect("accounts:profile")
