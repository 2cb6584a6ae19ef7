"""Account pages: sign up, profile with API keys."""

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.accounts.forms import SecretNameForm, SignUpForm
from portal.accounts.models import ApiKey


def signup(request):
    """Create an account and log in."""
    if request.user.is_authenticated:
        return redirect("swarm:contribute")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.username}! Contribute a GPU to join the swarm.")
        return redirect("swarm:contribute")
    return render(request, "accounts/signup.html", {"form": form})


@login_required
def profile(request):
    """The user's details and API keys; creating a key shows it once."""
    form = SecretNameForm(request.POST or None, initial={"name": "my script"})
    new_key = None
    if request.method == "POST" and form.is_valid():
        _, new_key = ApiKey.create_for(request.user, form.cleaned_data["name"])
    keys = request.user.api_keys.filter(revoked_at__isnull=True)
    return render(request, "accounts/profile.html", {"form": form, "keys": keys, "new_key": new_key})


@login_required
@require_POST
def revoke_api_key(request, pk: int):
    """Revoke one of the user's API keys (others' keys are 404)."""
    key = get_object_or_404(ApiKey, pk=pk, user=request.user)
    key.revoke()
    messages.info(request, f"API key {key.name!r} revoked.")
    return redirect("accounts:profile")
