"""Ledger pages: your credits (balance, usage, keys, payouts, statements), the node owner dashboard, the
admins' payout review queue. Every page shows the signed-in user's own data only; the queue is staff-only.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Max
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from portal.ledger import payouts, receipts, statements
from portal.ledger.books import user_account
from portal.ledger.models import ClientKey, Entry, Payout, Receipt
from portal.ledger.review import payout_context
from portal.ledger.spending import tokens_affordable
from portal.reputation.models import AuditEvidence
from portal.reputation.scoring import node_score, score_history
from portal.swarm.models import long_offline


@login_required
def credits(request):
    """Balance, usage and earnings chart, recent transactions, client keys, payouts, monthly statements."""
    user = request.user
    entries = Entry.objects.filter(account=user_account(user)).select_related("transaction").order_by("-id")[:50]
    context = {
        "summary": statements.summary(user),
        "affordable": tokens_affordable(user),
        "series": statements.daily_series(user),
        "entries": entries,
        "client_keys": ClientKey.objects.filter(user=user),
        "payouts": Payout.objects.filter(user=user)[:50],
        "months": statements.statement_months(user),
        "receipts": Receipt.objects.filter(client_key__user=user).order_by("-id")[:20],
    }
    return render(request, "ledger/credits.html", context)


@login_required
@require_POST
def add_client_key(request):
    """Register a client key (its usage receipts are paid from your account)."""
    try:
        receipts.register_client_key(request.user, request.POST.get("key", "").strip(), request.POST.get("name", ""))
        messages.success(request, "Client key registered.")
    except receipts.ReceiptRefused as exc:
        messages.error(request, f"Not registered: {exc.detail}")
    return redirect("ledger:credits")


@login_required
@require_POST
def revoke_client_key(request, pk: int):
    """Revoke one of your client keys (others' keys are 404)."""
    receipts.revoke_client_key(get_object_or_404(ClientKey, pk=pk, user=request.user))
    messages.success(request, "Client key revoked.")
    return redirect("ledger:credits")


@login_required
@require_POST
def request_payout(request):
    """Ask for a payout of earned credits."""
    try:
        amount = int(request.POST.get("amount", "0"))
        payouts.request_payout(request.user, amount, request.POST.get("destination", ""))
        messages.success(request, f"Payout of {amount} credits requested; an admin will review it.")
    except ValueError as exc:  # PayoutRefused is a ValueError too
        messages.error(request, f"Not requested: {getattr(exc, 'detail', 'amount must be a whole number')}")
    return redirect("ledger:credits")


@login_required
def statement(request, year: int, month: int):
    """Your monthly statement (``?format=csv`` to download it)."""
    if not 1 <= month <= 12 or not 2000 <= year <= 9999:
        raise Http404("no such month")
    st = statements.monthly_statement(request.user, year, month)
    if request.GET.get("format") == "csv":
        response = HttpResponse(statements.statement_csv(st), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="layerswarm-statement-{year}-{month:02d}.csv"'
        return response
    return render(request, "ledger/statement.html", {"statement": st})


@login_required
def node_dashboard(request):
    """The node owner's dashboard: per node, earnings and reputation over time, audit results, served tokens.

    Nodes offline for more than a day fold into one summary line (their earnings stay in the totals).
    """
    gone = long_offline()
    nodes = request.user.nodes.exclude(gone).select_related("model").order_by("-last_seen_at")[:20]
    folded = request.user.nodes.filter(gone).aggregate(count=Count("id"), last_seen=Max("last_seen_at"))
    since = timezone.now() - dt.timedelta(days=30)
    cards = []
    for node in nodes:
        history = score_history(node, since=since)
        cards.append(
            {
                "node": node,
                "score": node_score(node),
                "totals": statements.node_totals(node),
                "earn_id": f"earn-{node.pk}",
                "rep_id": f"rep-{node.pk}",
                "chart": {
                    "earnings": statements.node_earnings(node),
                    "reputation": {
                        "at": [int(at.timestamp()) for at, _ in history],
                        "score": [round(s, 4) for _, s in history],
                        "threshold": settings.REPUTATION_THRESHOLD,
                    },
                },
                "audits": AuditEvidence.objects.filter(node=node).order_by("-created")[:10],
                "audit_counts": {
                    "passed": AuditEvidence.objects.filter(node=node, passed=True).count(),
                    "failed": AuditEvidence.objects.filter(node=node, passed=False).count(),
                },
            }
        )
    context = {
        "cards": cards,
        "folded": folded,
        "summary": statements.summary(request.user),
        "series": statements.daily_series(request.user),
    }
    return render(request, "ledger/node_dashboard.html", context)


@staff_member_required
def review_queue(request):
    """Admins: open payout requests, oldest first, each with the owner's earnings and nodes' standing."""
    open_payouts = Payout.objects.filter(status__in=[Payout.Status.REQUESTED, Payout.Status.HELD]).select_related(
        "user"
    )
    rows = [payout_context(p, history_days=30) for p in open_payouts.order_by("requested_at")[:100]]
    decided = Payout.objects.exclude(status__in=[Payout.Status.REQUESTED, Payout.Status.HELD]).select_related(
        "user", "reviewed_by"
    )[:20]
    return render(request, "ledger/review_queue.html", {"rows": rows, "decided": decided})


@staff_member_required
def approved_payouts_csv(request):
    """Admins: every approved payout as CSV (for the accounting system)."""
    response = HttpResponse(payouts.approved_csv(), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="layerswarm-approved-payouts.csv"'
    return response
