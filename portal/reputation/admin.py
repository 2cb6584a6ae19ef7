"""Admin for reputation: each node's standing (score, history chart, evidence), audit evidence, suspensions."""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from portal.reputation import scoring
from portal.reputation.charts import history_svg
from portal.reputation.models import AuditEvidence, NodeStanding


@admin.register(NodeStanding)
class NodeStandingAdmin(admin.ModelAdmin):
    """Scores, suspensions pending review, and the evidence behind them."""

    list_display = ["node", "score", "suspended", "review", "suspended_at", "updated_at"]
    list_filter = ["suspended", "review"]
    search_fields = ["node__url", "node__owner__username"]
    list_select_related = ["node__model"]
    readonly_fields = [
        "node",
        "score",
        "signals",
        "updated_at",
        "suspended",
        "review",
        "suspended_at",
        "suspension_reason",
        "reviewed_by",
        "reviewed_at",
        "history_chart",
        "recent_evidence",
    ]
    exclude = ["uptime_at"]
    actions = ["lift", "uphold"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="score history (last 30 days)")
    def history_chart(self, standing: NodeStanding):
        return history_svg(scoring.score_history(standing.node_id)[-500:])

    @admin.display(description="latest evidence")
    def recent_evidence(self, standing: NodeStanding):
        rows = AuditEvidence.objects.filter(node_id=standing.node_id)[:20]
        return format_html(
            "<table><tr><th>when</th><th>kind</th><th>verdict</th><th>relative error</th><th>tolerance</th>"
            "<th>signed</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        reverse("admin:reputation_auditevidence_change", args=[e.pk]),
                        f"{e.created:%Y-%m-%d %H:%M:%S}",
                        e.kind,
                        "passed" if e.passed else "FAILED",
                        "-" if e.relative_error is None else f"{e.relative_error:.3g}",
                        "-" if e.tolerance is None else f"{e.tolerance:.3g}",
                        "yes" if e.signatures_verified else "no",
                    )
                    for e in rows
                ),
            ),
        )

    @admin.action(description="Lift the suspension (node back in the peer list)")
    def lift(self, request, queryset):
        for standing in queryset:
            scoring.lift_suspension(standing, request.user)
        self.message_user(request, f"{queryset.count()} suspension(s) lifted.", messages.SUCCESS)

    @admin.action(description="Uphold the suspension (ban the node)")
    def uphold(self, request, queryset):
        for standing in queryset:
            scoring.uphold_suspension(standing, request.user)
        self.message_user(request, f"{queryset.count()} node(s) banned.", messages.SUCCESS)


@admin.register(AuditEvidence)
class AuditEvidenceAdmin(admin.ModelAdmin):
    """Evidence is a record: read-only."""

    list_display = [
        "created",
        "node",
        "kind",
        "passed",
        "auditor",
        "relative_error",
        "tolerance",
        "signatures_verified",
    ]
    list_filter = ["kind", "passed", "signatures_verified"]
    search_fields = ["session_id", "node__url", "node__owner__username"]
    list_select_related = ["node__model", "auditor__model"]
    date_hierarchy = "created"

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in AuditEvidence._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
