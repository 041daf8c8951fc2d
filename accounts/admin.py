from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from accounts.models import ApiToken, AuditLog, TradingSettings, User


class TradingSettingsInline(admin.StackedInline):
    model = TradingSettings
    can_delete = False


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "first_name", "last_name", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_active", "date_joined"]
    search_fields = ["email", "first_name", "last_name"]
    inlines = [TradingSettingsInline]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Personal info", {"fields": ["first_name", "last_name"]}),
        ("Permissions", {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "actor", "action", "target", "ip"]
    list_filter = ["action", "created_at"]
    search_fields = ["user__email", "target", "action"]
    readonly_fields = [f.name for f in AuditLog._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Operators can see and revoke tokens, never create them (the raw token would be shown to the operator)."""

    list_display = ["name", "owner", "prefix", "read_only", "created_at", "last_used", "expires_at", "revoked_at"]
    list_filter = ["read_only", "created_at"]
    search_fields = ["owner__email", "name", "prefix"]
    readonly_fields = ["owner", "name", "prefix", "key_hash", "read_only", "created_at", "last_used", "expires_at"]

    def has_add_permission(self, request):
        return False
