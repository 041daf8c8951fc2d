from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from brokers.models import BrokerAccount, Execution
from risk.rules import ALLOW, Decision, is_exit, reject


def decide(*, execution: Execution) -> Decision:
    """Whether this execution may trade now. Exits are never blocked by entry rules."""
    account = execution.account
    if not account.enabled:
        return reject("account_disabled", f"Account {account.label} is disabled; enable it to trade")
    if account.status == BrokerAccount.Status.LOGIN_NEEDED:
        return reject("login_needed", f"Account {account.label} needs a broker login: {account.status_message}")
    if account.mode == BrokerAccount.Mode.LIVE and not settings.LIVE_TRADING_ENABLED:
        return reject("live_trading_disabled",
                      "Live trading is switched off on this server (LIVE_TRADING_ENABLED); nothing was sent")
    if execution.kind == Execution.Kind.SIGNAL and not is_exit(execution.intent):
        if not account.owner.trading_settings.auto_trade:
            return reject("auto_trade_off",
                          "Auto-trade is off in your trading settings: new entries are not placed (exits still run)")
        if execution.intent.get("limits"):
            return bot_limits_decide(execution)
    return ALLOW


def bot_limits_decide(execution: Execution) -> Decision:
    """A bot subscriber's own limits (seed 004): max concurrent positions from the bot, max daily loss."""
    from brokers.models import Position

    limits, bot_id = execution.intent["limits"], execution.intent["bot"]["id"]
    positions = Position.objects.filter(account=execution.account, meta__bot=bot_id)
    most = limits.get("max_concurrent_positions")
    if most is not None and positions.filter(status=Position.Status.OPEN).count() >= most:
        return reject("max_concurrent_positions", f"This bot already has {most} open position(s) on "
                      f"{execution.account.label}, your limit for it: no new entry until one closes")
    if limits.get("max_daily_loss") is not None:
        today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
        realized = positions.filter(closed_at__gte=today).aggregate(total=Sum("realized_pnl"))["total"] or 0
        if -realized >= Decimal(limits["max_daily_loss"]):
            return reject("max_daily_loss", f"Daily loss limit reached for this bot: {-realized:.2f} lost today "
                          f"(limit {Decimal(limits['max_daily_loss']):.2f}). New entries resume tomorrow (UTC).")
    return ALLOW
