from django.contrib import admin

from webhooks.models import Signal, WebhookLog


@admin.register(Signal)
class SignalAdmin(admin.ModelAdmin):
    list_display = ["id", "received_at", "account", "format", "client_id", "source_ip", "ack_ms"]
    list_filter = ["format", "received_at"]
    search_fields = ["id", "client_id", "account__label", "account__owner__email"]
    list_select_related = ["account"]
    readonly_fields = [f.name for f in Signal._meta.fields]


@admin.register(WebhookLog)
class WebhookLogAdmin(admin.ModelAdmin):
    list_display = ["created_at", "method", "path", "status", "account", "latency_ms", "source_ip", "error"]
    list_filter = ["status", "method", "created_at"]
    search_fields = ["path", "error", "account__label", "source_ip"]
    list_select_related = ["account"]
    readonly_fields = [f.name for f in WebhookLog._meta.fields]
