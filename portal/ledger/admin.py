"""Admin for the ledger: payout review (approve / reject / hold with the owner's reputation, evidence and
earnings next to the request), CSV export of approved payouts, and read-only books and receipts.

Ledger rows are append-only: the admin can look at transactions, entries and receipts but never change
or delete them. Payout decisions go through ``portal.ledger.payouts`` (audited as ``PayoutEvent`` rows).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from portal.ledger import payouts
from portal.ledger.books import balance
from portal.ledger.models import Account, ClientKey, Entry, Payout, PayoutEvent, Receipt, Transaction
from portal.ledger.review import clear_receipt, payout_context
from portal.reputation.charts import history_svg


class ReadOnlyAdmin(admin.ModelAdmin):
    """Look, never touch: the books are append-only."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class EntryInline(admin.TabularInline):
    model = Entry
    fields = ["account", "amount", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0


@admin.register(Transaction)
class TransactionAdmin(ReadOnlyAdmin):
    list_display = ["id", "kind", "reference", "memo", "created_at"]
    list_filter = ["kind"]
    search_fields = ["reference", "memo"]
    inlines = [EntryInline]


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["code", "kind", "user", "node", "current_balance"]
    list_filter = ["kind"]
    search_fields = ["code", "user__username"]

    @admin.display(description="balance")
    def current_balance(self, account: Account) -> int:
        return balance(account)


class FlaggedFilter(admin.SimpleListFilter):
    """Receipts that look like linked traffic (an account paying its own node), cleared or not."""

    title = "linked traffic"
    parameter_name = "flagged"

    def lookups(self, request, model_admin):
        return [("yes", "flagged, not cleared"), ("cleared", "flagged, cleared"), ("no", "not flagged")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(flag="").filter(cleared_at__isnull=True)
        if self.value() == "cleared":
            return queryset.exclude(flag="").filter(cleared_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(flag="")
        return queryset


@admin.register(Receipt)
class ReceiptAdmin(ReadOnlyAdmin):
    list_display = [
        "receipt_id",
        "status",
        "earner",
        "node",
        "model",
        "block_tokens",
        "unfunded_credits",
        "held_credits",
        "flag",
        "cleared_by",
        "escrowed",
        "submitted_at",
    ]
    list_filter = ["status", FlaggedFilter, "escrowed", "model"]
    search_fields = ["receipt_id", "earner__username", "session_id"]
    list_select_related = ["earner", "node", "cleared_by"]
    actions = ["clear_flagged"]

    def has_clear_permission(self, request) -> bool:
        # Receipts stay read-only; clearing moves credits, so it takes the change permission (superusers have it).
        return request.user.has_perm("ledger.change_receipt")

    @admin.action(description="Clear the selected flagged receipts (reviewed: no self-dealing)", permissions=["clear"])
    def clear_flagged(self, request, queryset):
        done = 0
        for receipt in queryset.exclude(flag="").filter(cleared_at__isnull=True):
            try:
                clear_receipt(receipt, request.user)
                done += 1
            except payouts.PayoutRefused as exc:
                self.message_user(
                    request, f"Receipt {receipt.receipt_id[:8]}: not cleared: {exc.detail}", messages.ERROR
                )
        self.message_user(request, f"{done} flagged receipts cleared; their funded parts are payable now.")


@admin.register(ClientKey)
class ClientKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "key", "user", "created_at", "revoked_at"]
    search_fields = ["key", "name", "user__username"]
    readonly_fields = ["key", "user", "created_at"]


class PayoutEventInline(admin.TabularInline):
    model = PayoutEvent
    fields = ["at", "actor", "action", "detail"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0


class ReviewForm(forms.Form):
    """One review step: approve (needs the external reference), reject (needs a reason) or hold."""

    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject"), ("hold", "Hold")])
    external_reference = forms.CharField(max_length=200, required=False, help_text="the payment's id (approve)")
    reason = forms.CharField(max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2}))


@admin.register(Payout)
class PayoutAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "amount", "status", "requested_at", "reviewed_by", "reviewed_at", "review_link"]
    list_filter = ["status"]
    search_fields = ["user__username", "external_reference", "destination"]
    list_select_related = ["user", "reviewed_by"]
    readonly_fields = [
        "user",
        "amount",
        "destination",
        "status",
        "requested_at",
        "reviewed_by",
        "reviewed_at",
        "external_reference",
        "reason",
    ]
    inlines = [PayoutEventInline]
    actions = ["export_approved_csv"]

    def has_add_permission(self, request):
        return False  # owners request payouts; admins decide

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="review")
    def review_link(self, payout: Payout):
        if not payout.open:
            return "—"
        return format_html('<a href="{}">review</a>', reverse("admin:ledger_payout_review", args=[payout.pk]))

    @admin.action(description="Export the selected approved payouts as CSV")
    def export_approved_csv(self, request, queryset):
        response = HttpResponse(payouts.approved_csv(queryset), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="layerswarm-approved-payouts.csv"'
        return response

    def get_urls(self):
        review = self.admin_site.admin_view(self.review_view)
        return [path("<int:pk>/review/", review, name="ledger_payout_review"), *super().get_urls()]

    def review_view(self, request, pk: int):
        """The request with the owner's earnings, nodes' reputation history and audit evidence; the decision form."""
        payout = get_object_or_404(Payout, pk=pk)
        if not self.has_change_permission(request, payout):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        form = ReviewForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                if data["decision"] == "approve":
                    payouts.approve(payout, request.user, data["external_reference"])
                elif data["decision"] == "reject":
                    payouts.reject(payout, request.user, data["reason"])
                else:
                    payouts.hold(payout, request.user, data["reason"])
            except payouts.PayoutRefused as exc:
                self.message_user(request, f"Not done: {exc.detail}", messages.ERROR)
            else:
                self.message_user(request, f"Payout #{payout.pk}: {data['decision']} recorded.", messages.SUCCESS)
                return redirect("admin:ledger_payout_change", payout.pk)
        context = payout_context(payout)
        for node in context["nodes"]:
            node["chart"] = history_svg(node["history"])
        context.update(
            self.admin_site.each_context(request),
            title=f"Review payout #{payout.pk}",
            opts=self.model._meta,
            form=form,
            original=payout,
        )
        return TemplateResponse(request, "admin/ledger/payout_review.html", context)
