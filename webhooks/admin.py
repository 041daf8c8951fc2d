from django.contrib import admin

from webhooks.models import Signal, WebhookLog


@admin.register(Signal)
class SignalAdmin(admin.ModelAdmin):
    list_display = ["id", "received_at", "account", "bot", "format", "client_id", "source_ip", "ack_ms",
                    "total_subscribers", "successful", "failed", "rejected"]
    list_filter = ["format", "received_at", "bot"]
    search_fields = ["id", "client_id", "account__label", "account__owner__email", "bot__name"]
    list_select_related = ["account", "bot"]
    readonly_fields = [f.name for f in Signal._meta.fields]


@admin.register(WebhookLog)
class WebhookLogAdmin(admin.ModelAdmin):
    list_display = ["created_at", "method", "path", "status", "account", "bot", "latency_ms", "source_ip", "error"]
    list_filter = ["status", "method", "created_at"]
    search_fields = ["path", "error", "account__label", "bot__name", "source_ip"]
    list_select_related = ["account", "bot"]
    readonly_fields = [f.name for f in WebhookLog._meta.fields]
