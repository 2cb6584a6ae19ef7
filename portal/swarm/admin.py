"""Admin for the tracker: nodes (filters, ban/unban, heartbeat history) and models."""

from django.contrib import admin, messages

from portal.swarm import tracker
from portal.swarm.models import Heartbeat, Node, SwarmModel


@admin.register(SwarmModel)
class SwarmModelAdmin(admin.ModelAdmin):
    list_display = ["name", "num_blocks", "hidden_size", "description"]


class HeartbeatInline(admin.TabularInline):
    """The latest heartbeats of a node, newest first."""

    model = Heartbeat
    fields = ["at", "cache_tokens_left", "throughput", "open_sessions"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    show_change_link = False

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        recent = list(qs.order_by("-at").values_list("pk", flat=True)[:50])
        return qs.filter(pk__in=recent).order_by("-at")


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "model",
        "span",
        "state",
        "banned",
        "owner",
        "connection",
        "throughput",
        "cache_tokens_left",
        "last_seen_at",
    ]
    list_filter = ["state", "banned", "model", "relay", ("owner", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["url", "owner__username", "token__name"]
    readonly_fields = ["registered_at", "last_seen_at", "token", "owner"]
    list_select_related = ["model", "owner"]
    inlines = [HeartbeatInline]
    actions = ["ban", "unban"]

    @admin.display(description="blocks")
    def span(self, node: Node) -> str:
        return f"{node.start_block}:{node.end_block}"

    @admin.action(description="Ban the selected nodes (hidden from clients, heartbeats refused)")
    def ban(self, request, queryset):
        self.message_user(request, f"{tracker.set_banned(queryset, True)} node(s) banned.", messages.SUCCESS)

    @admin.action(description="Unban the selected nodes")
    def unban(self, request, queryset):
        self.message_user(request, f"{tracker.set_banned(queryset, False)} node(s) unbanned.", messages.SUCCESS)


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    """Heartbeat history across the swarm."""

    list_display = ["node", "at", "cache_tokens_left", "throughput", "open_sessions"]
    list_filter = ["node__model", "node__state"]
    search_fields = ["node__id"]
    date_hierarchy = "at"
    list_select_related = ["node", "node__model"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
