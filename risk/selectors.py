"""Reads for the risk engine: the counters snapshot the rules see, and the kill switch state."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db.models import Q, Sum

from brokers.models import BrokerAccount, Execution, Position
from risk.models import CalendarEvent, RiskAdmission, RiskConfig, TradingHalt
from risk.rules import Counters, NewsEvent, symbols
from tradeflow.precompiled import Precompiled

IN_FLIGHT = (Execution.Status.PENDING, Execution.Status.RUNNING)
NOT_TRADED = (Execution.Status.REJECTED, Execution.Status.FAILED)


def trading_halt_current() -> TradingHalt | None:
    return TradingHalt.objects.select_related("actor").first()


# Asked by every execution and drain: compiled once per process (tradeflow/precompiled.py).
_latest_halt = Precompiled(
    lambda: TradingHalt.objects.order_by("-created_at", "-id").values_list("halted", flat=True)[:1],
    model=TradingHalt, arity=0)


def trading_halted() -> bool:
    """Whether the kill switch is on: its latest change says so (none yet: off)."""
    latest = _latest_halt()
    return bool(latest and latest[0])


def risk_config_get(*, user) -> RiskConfig:
    config, _ = RiskConfig.objects.get_or_create(user=user)
    return config


def day_start(*, user, now: datetime) -> datetime:
    """Midnight today in the user's timezone (their trading settings), as an aware datetime."""
    settings_ = getattr(user, "trading_settings", None)
    tz = ZoneInfo(getattr(settings_, "timezone", None) or "Asia/Kolkata")
    local = now.astimezone(tz)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def account_pnl_today(*, account: BrokerAccount, since: datetime) -> Decimal:
    """Realized P&L of positions closed since ``since`` plus the open positions' realized and unrealized P&L."""
    positions = Position.objects.filter(account=account)
    realized = positions.filter(status=Position.Status.CLOSED, closed_at__gte=since).aggregate(
        total=Sum("realized_pnl"))["total"] or Decimal("0")
    for position in positions.filter(status=Position.Status.OPEN):
        realized += position.unrealized_pnl + (position.realized_pnl if position.opened_at >= since else 0)
    return realized


def news_events(*, config: RiskConfig, now: datetime) -> list[NewsEvent]:
    if not config.news_lockout_enabled:
        return []
    window = timedelta(minutes=max(config.news_minutes_before, config.news_minutes_after) + 1)
    qs = CalendarEvent.objects.filter(impact=CalendarEvent.Impact.HIGH, starts_at__gte=now - window,
                                      starts_at__lte=now + window)
    markets = symbols(config.news_markets)
    if markets:
        qs = qs.filter(Q(market__in=markets) | Q(market=""))
    return [NewsEvent(e.starts_at, e.title, e.market) for e in qs]


def risk_counters(*, user, account: BrokerAccount, config: RiskConfig, now: datetime) -> Counters:
    """The counters the config's rules read; a counter no rule uses is not queried (this runs per entry)."""
    on = config.enabled
    since = day_start(user=user, now=now)
    counted = on and (config.max_trades_per_day is not None or config.max_open_positions is not None)
    admitted = RiskAdmission.objects.filter(user=user) if counted else None  # a queryset costs CPU even unused
    trades = (admitted.filter(created_at__gte=since).exclude(execution__status__in=NOT_TRADED).count()
              if on and config.max_trades_per_day is not None else 0)
    open_count = 0
    if on and config.max_open_positions is not None:
        in_flight = admitted.filter(execution__status__in=IN_FLIGHT).count()
        open_count = Position.objects.filter(account__owner=user, status=Position.Status.OPEN).count() + in_flight
    pnl = account_pnl_today(account=account, since=since) if on and config.max_daily_loss is not None else Decimal(0)
    events = news_events(config=config, now=now) if on and config.news_lockout_enabled else []
    return Counters(pnl_today=pnl, trades_today=trades, open_positions=open_count, currency=account.currency,
                    events=events)
