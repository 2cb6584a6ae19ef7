"""Admin for users (ban/unban), API keys and node tokens."""

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import User

from portal.accounts import tokencache
from portal.accounts.models import ApiKey, NodeToken


class _SecretAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["prefix", "digest", "created_at", "last_used_at"]
    actions = ["revoke"]

    @admin.action(description="Revoke the selected secrets")
    def revoke(self, request, queryset):
        for secret in queryset:
            secret.revoke()
        self.message_user(request, f"{queryset.count()} revoked.", messages.SUCCESS)


admin.site.register(ApiKey, _SecretAdmin)
admin.site.register(NodeToken, _SecretAdmin)


class SwarmUserAdmin(UserAdmin):
    """Users, with ban/unban: a banned user cannot log in and their tokens stop working."""

    list_display = ["username", "email", "is_active", "is_staff", "date_joined", "last_login"]
    actions = ["ban", "unban"]

    @admin.action(description="Ban the selected users (log-in, API keys and node tokens stop working)")
    def ban(self, request, queryset):
        # The tracker hides nodes of inactive owners, so their spans leave the swarm at once.
        banned = queryset.exclude(pk=request.user.pk)
        user_ids = list(banned.values_list("pk", flat=True))
        banned.update(is_active=False)  # no signals: the heartbeat fast path's token cache is told below
        tokencache.forget_users(user_ids)
        self.message_user(request, "Banned.", messages.SUCCESS)

    @admin.action(description="Unban the selected users")
    def unban(self, request, queryset):
        queryset.update(is_active=True)
        self.message_user(request, "Unbanned.", messages.SUCCESS)


admin.site.unregister(User)
admin.site.register(User, SwarmUserAdmin)
