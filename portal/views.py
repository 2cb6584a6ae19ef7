"""The home page."""

from django.shortcuts import render

from portal.swarm.health import swarm_health


def home(request):
    """What Layerswarm is, the swarm at a glance, and where to go next."""
    return render(request, "home.html", {"health": swarm_health()})
