from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html

from bots import services
from bots.models import Bot, Subscription
from bots.views import remember_secret


@admin.register(Bot)
class BotAdmin(admin.ModelAdmin):
    list_display = ["name", "market_type", "broker", "status", "webhook_path", "default_margin", "default_leverage",
                    "default_stop_loss_pct", "default_take_profit_pct", "rate_limit", "setup_page"]
    list_filter = ["status", "market_type", "broker"]
    search_fields = ["name", "description", "webhook_path", "symbols"]
    readonly_fields = ["secret_rotated_at", "created_by", "created_at", "updated_at", "setup_page"]
    actions = ["pause_bots", "resume_bots", "rotate_secret"]

    @admin.display(description="Setup")
    def setup_page(self, obj: Bot) -> str:
        if not obj.pk:
            return "-"
        return format_html('<a href="{}">Webhook URL and TradingView message</a>', reverse("bot-admin-page",
                                                                                           args=[obj.pk]))

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        remember_secret(request, obj, services.bot_save_new(bot=obj, created_by=request.user))

    def response_add(self, request, obj, post_url_continue=None):
        return redirect("bot-admin-page", pk=obj.pk)  # the one page that shows the new secret

    @admin.action(description="Pause selected bots")
    def pause_bots(self, request, queryset):
        for bot in queryset:
            services.bot_pause(bot=bot, actor=request.user)

    @admin.action(description="Resume selected bots")
    def resume_bots(self, request, queryset):
        for bot in queryset:
            try:
                services.bot_resume(bot=bot, actor=request.user)
            except ValidationError as exc:
                self.message_user(request, " ".join(exc.messages), messages.ERROR)

    @admin.action(description="Rotate the master secret (the old one stops working)")
    def rotate_secret(self, request, queryset):
        for bot in queryset:
            secret = services.bot_rotate_secret(bot=bot, actor=request.user)
            remember_secret(request, bot, secret)
            self.message_user(request, f"New secret for {bot.name} (shown once; update the TradingView alert): "
                              f"{secret}", messages.WARNING)


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["bot", "user", "account", "status", "margin", "leverage", "lots", "stop_loss_pct",
                    "take_profit_pct", "max_daily_loss", "max_concurrent_positions", "created_at"]
    list_filter = ["status", "bot"]
    search_fields = ["bot__name", "user__email", "account__label"]
    list_select_related = ["bot", "user", "account"]
    raw_id_fields = ["user", "account"]
    readonly_fields = ["created_at", "updated_at", "unsubscribed_at"]
    actions = ["pause_subscriptions", "resume_subscriptions"]

    @admin.action(description="Pause selected subscriptions")
    def pause_subscriptions(self, request, queryset):
        for subscription in queryset.exclude(status=Subscription.Status.UNSUBSCRIBED):
            services.subscription_pause(subscription=subscription, actor=request.user)

    @admin.action(description="Resume selected subscriptions")
    def resume_subscriptions(self, request, queryset):
        for subscription in queryset.exclude(status=Subscription.Status.UNSUBSCRIBED):
            services.subscription_resume(subscription=subscription, actor=request.user)
