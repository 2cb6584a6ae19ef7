"""What an admin needs next to a payout request: the owner's earnings, nodes' reputation history and audit evidence."""

from __future__ import annotations

import datetime as dt

from django.db.models import Sum
from django.utils import timezone

from portal.ledger import statements
from portal.ledger.models import Payout, Receipt
from portal.ledger.payouts import earned, payable
from portal.reputation.models import AuditEvidence
from portal.reputation.scoring import node_score, score_history


def payout_context(payout: Payout, history_days: int = 30) -> dict:
    """The payout with its owner's earnings, every node of the owner (score, history, evidence), its audit trail."""
    user = payout.user
    since = timezone.now() - dt.timedelta(days=history_days)
    nodes = []
    for node in user.nodes.select_related("model").order_by("-last_seen_at")[:20]:
        evidence = AuditEvidence.objects.filter(node=node)
        nodes.append(
            {
                "node": node,
                "score": node_score(node),
                "history": score_history(node, since=since),
                "evidence": list(evidence.order_by("-created")[:10]),
                "passed": evidence.filter(passed=True).count(),
                "failed": evidence.filter(passed=False).count(),
                "totals": statements.node_totals(node),
            }
        )
    receipts = Receipt.objects.filter(earner=user, status=Receipt.Status.SETTLED)
    return {
        "payout": payout,
        "owner": user,
        "earned": earned(user),
        "payable": payable(user),
        "summary": statements.summary(user),
        "receipts": receipts.count(),
        "block_tokens": receipts.aggregate(s=Sum("block_tokens"))["s"] or 0,
        "nodes": nodes,
        "failed_audits": sum(n["failed"] for n in nodes),
        "events": list(payout.events.select_related("actor")),
        "series": statements.daily_series(user),
    }
