from django.contrib import admin

from brokers.models import AccountApiKey, BrokerAccount, Execution, Instrument, Order, PaperOrder, Position, Quote
from brokers.services import account_set_enabled


@admin.register(BrokerAccount)
class BrokerAccountAdmin(admin.ModelAdmin):
    list_display = ["label", "owner", "broker", "mode", "enabled", "status", "balance", "currency", "created_at"]
    list_filter = ["broker", "mode", "enabled", "status"]
    search_fields = ["label", "owner__email"]
    list_select_related = ["owner"]
    # Credentials are write-only here too: never rendered back, even to staff.
    exclude = ["api_key", "api_secret", "access_token"]
    readonly_fields = ["last_sync", "created_at"]
    actions = ["disable_accounts", "enable_accounts"]

    @admin.action(description="Disable selected accounts")
    def disable_accounts(self, request, queryset):
        for account in queryset:
            account_set_enabled(account=account, enabled=False, actor=request.user)

    @admin.action(description="Enable selected accounts")
    def enable_accounts(self, request, queryset):
        for account in queryset:
            account_set_enabled(account=account, enabled=True, actor=request.user)


@admin.register(AccountApiKey)
class AccountApiKeyAdmin(admin.ModelAdmin):
    list_display = ["masked", "account", "created_at", "last_used"]
    search_fields = ["prefix", "account__label", "account__owner__email"]
    exclude = ["key_hash"]
    readonly_fields = ["account", "prefix", "created_at", "last_used"]


class OrderInline(admin.TabularInline):
    model = Order
    extra = 0
    fields = ["leg", "client_order_id", "symbol", "side", "qty", "avg_price", "status", "reject_reason"]
    readonly_fields = fields
    can_delete = False


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "account", "kind", "status", "reason_code", "latency_ms", "slippage_bps",
                    "attempts"]
    list_filter = ["status", "kind", "reason_code", "created_at"]
    search_fields = ["account__label", "account__owner__email", "reason", "signal__id"]
    list_select_related = ["account"]
    inlines = [OrderInline]
    readonly_fields = ["signal", "account", "subscription", "kind", "intent", "attempts", "lease_until", "started_at",
                       "finished_at", "latency_ms", "slippage", "slippage_bps"]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["created_at", "account", "leg", "symbol", "side", "qty", "avg_price", "status", "client_order_id"]
    list_filter = ["status", "side", "order_type", "created_at"]
    search_fields = ["symbol", "client_order_id", "broker_order_id", "account__label", "account__owner__email"]
    list_select_related = ["account"]


@admin.register(Position)
class PositionAdmin(admin.ModelAdmin):
    list_display = ["symbol", "account", "side", "qty", "avg_price", "last_price", "stop_loss", "take_profit",
                    "breakeven", "realized_pnl", "status", "opened_at"]
    list_filter = ["status", "side", "opened_at"]
    search_fields = ["symbol", "account__label", "account__owner__email"]
    list_select_related = ["account"]


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = ["tradingsymbol", "broker", "exchange", "instrument_type", "strike", "expiry", "lot_size",
                    "tick_size"]
    list_filter = ["broker", "exchange", "instrument_type", "expiry"]
    search_fields = ["tradingsymbol", "name"]


@admin.register(Quote)
class QuoteAdmin(admin.ModelAdmin):
    list_display = ["symbol", "broker", "price", "updated_at"]
    list_filter = ["broker"]
    search_fields = ["symbol"]


@admin.register(PaperOrder)
class PaperOrderAdmin(admin.ModelAdmin):
    list_display = ["created_at", "account", "client_order_id", "symbol", "side", "qty", "price"]
    search_fields = ["client_order_id", "symbol"]
