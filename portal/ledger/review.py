"""What an admin needs next to a payout request (the owner's earnings, flagged receipts, nodes' reputation
history and audit evidence), and the review of flagged receipts (:func:`clear_receipt`).
"""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from portal.ledger import funding, statements
from portal.ledger.books import balance, held_account, post, user_account
from portal.ledger.models import Payout, Receipt, Transaction
from portal.ledger.payouts import PayoutRefused, earned, payable
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
    flagged = receipts.exclude(flag="").filter(cleared_at__isnull=True)
    return {
        "held": balance(held_account(user)),
        "flagged": list(flagged.order_by("-id")[:20]),
        "flagged_count": flagged.count(),
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


def clear_receipt(receipt: Receipt, admin) -> Transaction | None:
    """An admin reviewed a flagged receipt and found no self-dealing: its funded part becomes payable.

    The unfunded part stays held: what the payer paid out of a grant, or, for gateway work, what collected
    revenue does not cover now (a flagged gateway receipt takes its funding only when cleared). Idempotent:
    clearing twice moves nothing more.

    Raises:
        PayoutRefused: ``own_receipt`` (four eyes: the admin earned it), ``not_flagged``.
    """
    with transaction.atomic():
        r = Receipt.objects.select_for_update(of=("self",)).get(pk=receipt.pk)
        if getattr(admin, "pk", None) is None or admin.pk == r.earner_id:
            raise PayoutRefused(
                "own_receipt", "four eyes: a flagged receipt is cleared by an admin who did not earn it"
            )
        if r.status != Receipt.Status.SETTLED or not r.flag:
            raise PayoutRefused("not_flagged", f"receipt {r.receipt_id} is not a settled, flagged receipt")
        if r.cleared_at is not None:
            return None
        uses = 0
        if r.client_key.user_id is None:  # gateway work: funded now from what is left of collected revenue
            uses = r.block_tokens - funding.unfunded_by_gateway(r.block_tokens)
            r.unfunded_credits = r.block_tokens - uses
        r.cleared_by, r.cleared_at = admin, timezone.now()
        r.save(update_fields=["cleared_by", "cleared_at", "unfunded_credits"])
        amount = r.held_credits - r.unfunded_credits
        if amount <= 0:
            return None
        return post(
            Transaction.Kind.HELD_RELEASE,
            f"held-release:{r.receipt_id}",
            [(held_account(r.earner_id), -amount), (user_account(r.earner_id), amount)],
            memo=f"flagged receipt {r.receipt_id[:8]} cleared by {admin}"[:300],
            funded=-uses,
        )
