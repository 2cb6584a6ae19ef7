"""Reputation pages: a node's score over time and the evidence behind it (its owner and staff only)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, render

from portal.reputation import scoring
from portal.reputation.charts import history_svg
from portal.reputation.models import AuditEvidence, NodeStanding
from portal.swarm.models import Node


@login_required
def node_reputation(request, pk: int):
    """A node's score, its history chart, its signals and its audit evidence; other users' nodes are 404."""
    nodes = Node.objects.all() if request.user.is_staff else Node.objects.filter(owner=request.user)
    node = get_object_or_404(nodes.select_related("model"), pk=pk)
    standing = NodeStanding.objects.filter(node=node).first()
    context = {
        "node": node,
        "score": scoring.node_score(node),
        "standing": standing,
        "signals": sorted((standing.signals if standing else {}).items()),
        "chart": history_svg(scoring.score_history(node)[-500:]),
        "evidence": AuditEvidence.objects.filter(node=node).select_related("auditor")[:100],
        "threshold": scoring.threshold(),
    }
    return render(request, "reputation/node.html", context)
