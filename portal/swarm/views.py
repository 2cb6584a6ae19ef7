"""Swarm pages: contribute a GPU (node tokens + your nodes) and the health map."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.accounts.forms import SecretNameForm
from portal.accounts.models import NodeToken
from portal.swarm.health import swarm_health
from portal.swarm.models import SwarmModel


def _portal_url(request) -> str:
    return request.build_absolute_uri("/").rstrip("/")


def _pip_spec(source: str) -> str:
    """What to put after ``pip install``: a local checkout as is, a URL as a direct reference."""
    return source if source.startswith(("/", ".")) else f"swarmnode @ {source}"


@login_required
def contribute(request):
    """Create a node token (shown once with the commands to run) and list the user's machines and nodes."""
    form = SecretNameForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        _, new_token = NodeToken.create_for(request.user, form.cleaned_data["name"])
    model = SwarmModel.objects.first()
    context = {
        "form": form,
        "new_token": new_token,
        "tokens": request.user.node_tokens.filter(revoked_at__isnull=True),
        "nodes": request.user.nodes.select_related("model").order_by("-last_seen_at")[:100],
        "portal_url": _portal_url(request),
        "pip_spec": _pip_spec(settings.SWARMNODE_PIP_SOURCE),
        "model": model,
        "blocks": f"0:{model.num_blocks}" if model else "0:10",
    }
    return render(request, "swarm/contribute.html", context)


@login_required
@require_POST
def revoke_node_token(request, pk: int):
    """Revoke one of the user's node tokens (others' tokens are 404); its nodes stop being able to heartbeat."""
    token = get_object_or_404(NodeToken, pk=pk, user=request.user)
    token.revoke()
    messages.info(request, f"Node token {token.name!r} revoked.")
    return redirect("swarm:contribute")


def health_map(request, model: str | None = None):
    """Every block of each model with the nodes covering it; refreshed live by ``frontend/health_map.js``."""
    health = swarm_health(model)
    if model is not None and not health["models"]:
        raise Http404(f"no model {model!r}")
    return render(request, "swarm/health_map.html", {"health": health, "model": model})
