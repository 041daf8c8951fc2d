from django.contrib import admin, messages

from billing.models import BillingAccount, Plan, StripeEvent
from billing.services import trial_extend


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "price", "stripe_price_id", "max_brokers", "max_accounts_per_broker",
                    "max_bot_subscriptions", "trades_per_month", "active")
    list_editable = ("price", "stripe_price_id", "active")
    list_filter = ("active",)
    search_fields = ("name", "slug", "stripe_price_id")


@admin.action(description="Extend the trial by 3 days")
def extend_trial(modeladmin, request, queryset):
    for account in queryset.select_related("user"):
        trial_extend(account=account, days=3, actor=request.user)
    messages.success(request, f"Extended {queryset.count()} trial(s) by 3 days.")


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ("user", "plan", "status", "trial_ends_at", "current_period_end", "cancel_at_period_end",
                    "grace_until", "stripe_customer_id")
    list_filter = ("status", "plan", "cancel_at_period_end")
    search_fields = ("user__email", "stripe_customer_id", "stripe_subscription_id")
    list_select_related = ("user", "plan")
    raw_id_fields = ("user",)
    readonly_fields = ("stripe_synced_at", "updated_at")
    actions = [extend_trial]


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = ("id", "type", "created", "received_at", "outcome")
    list_filter = ("type",)
    search_fields = ("id", "outcome")
    readonly_fields = ("id", "type", "created", "received_at", "outcome", "payload")
