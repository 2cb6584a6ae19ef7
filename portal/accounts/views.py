"""Account pages: sign up (with e-mail verification), profile with API keys."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.accounts import verification
from portal.accounts.forms import SecretNameForm, SignUpForm
from portal.accounts.models import ApiKey, Unverified


def signup(request):
    """Create an account, log in, and (when accounts verify e-mail) mail the confirmation link.

    Rate-limited per address (``RATE_LIMITS`` "signup", portal/ratelimits.py).
    """
    if request.user.is_authenticated:
        return redirect("swarm:contribute")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        if settings.ACCOUNTS_VERIFY_EMAIL:
            verification.send_verification(user, request)
            messages.info(request, f"We sent a link to {user.email}: open it to create node tokens and API keys.")
        messages.success(request, f"Welcome, {user.username}! Contribute a GPU to join the swarm.")
        return redirect("swarm:contribute")
    return render(request, "accounts/signup.html", {"form": form})


def verify_email(request, token: str):
    """The link from the confirmation mail."""
    try:
        user = verification.verify(token)
    except verification.BadLink as exc:
        return render(request, "accounts/verify_email.html", {"error": str(exc)}, status=400)
    messages.success(request, f"Thanks, {user.username}: your e-mail address is confirmed.")
    return redirect("accounts:profile" if request.user.is_authenticated else "accounts:login")


@login_required
@require_POST
def resend_verification(request):
    """Mail the confirmation link again (rate-limited: ``RATE_LIMITS`` "verify-email")."""
    if verification.is_verified(request.user):
        messages.info(request, "Your e-mail address is already confirmed.")
    else:
        verification.send_verification(request.user, request)
        messages.info(request, f"We sent a new link to {request.user.email}.")
    return redirect("accounts:profile")


@login_required
def profile(request):
    """The user's details and API keys; creating a key shows it once (rate-limited: "api-key")."""
    form = SecretNameForm(request.POST or None, initial={"name": "my script"})
    new_key = None
    if request.method == "POST" and form.is_valid():
        try:
            _, new_key = ApiKey.create_for(request.user, form.cleaned_data["name"])
        except Unverified as exc:
            messages.error(request, str(exc))
    keys = request.user.api_keys.filter(revoked_at__isnull=True)
    context = {"form": form, "keys": keys, "new_key": new_key, "verified": verification.is_verified(request.user)}
    return render(request, "accounts/profile.html", context)


@login_required
@require_POST
def revoke_api_key(request, pk: int):
    """Revoke one of the user's API keys (others' keys are 404)."""
    key = get_object_or_404(ApiKey, pk=pk, user=request.user)
    key.revoke()
    messages.info(request, f"API key {key.name!r} revoked.")
    return redirect("accounts:profile")
