"""Swarm pages: contribute a GPU (node tokens + your nodes) and the health map."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.accounts.forms import SecretNameForm
from portal.accounts.models import NodeToken
from portal.swarm.dht_reader import bootstrap_addrs
from portal.swarm.health import swarm_health
from portal.swarm.install import OS_LABELS, all_setups, os_from_user_agent
from portal.swarm.models import SwarmModel, long_offline


def _portal_url(request) -> str:
    return request.build_absolute_uri("/").rstrip("/")


def _pip_spec(source: str) -> str:
    """What to put after ``pip install``: a local checkout as is, a URL as a direct reference."""
    return source if source.startswith(("/", ".")) else f"swarmnode @ {source}"


@login_required
def contribute(request):
    """Create a node token (shown once, inside the commands to run) and list the user's machines and nodes.

    The commands are for the visitor's OS (``User-Agent``; ``?os=linux|macos|windows`` chooses another):
    all three are on the page, the others hidden behind a switcher, so switching keeps a new token on screen.
    """
    form = SecretNameForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        _, new_token = NodeToken.create_for(request.user, form.cleaned_data["name"])
    model = SwarmModel.objects.first()
    chosen = request.GET.get("os", "")
    if chosen not in OS_LABELS:  # ?os= is the switcher's link (without JavaScript); else the browser's OS
        chosen = os_from_user_agent(request.headers.get("user-agent", ""))
    model_name = model.name if model else "smollm2"
    gone = long_offline()  # folded into one line, as on the node dashboard
    context = {
        "form": form,
        "new_token": new_token,
        "tokens": request.user.node_tokens.filter(revoked_at__isnull=True),
        "nodes": request.user.nodes.exclude(gone).select_related("model").order_by("-last_seen_at")[:100],
        "folded": request.user.nodes.filter(gone).count(),
        "portal_url": _portal_url(request),
        "model": model,
        "setups": all_setups(_portal_url(request), _pip_spec(settings.SWARMNODE_PIP_SOURCE), model_name, new_token),
        "chosen_os": chosen,
        "dht_bootstrap": bootstrap_addrs(),  # #18: where nodes find the swarm while this portal is down
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
