"""Reads of tenant data. Every query that belongs to a user goes through a function that takes the user."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Count, QuerySet, Sum
from django.urls import reverse
from django.utils import timezone

from brokers.models import AccountApiKey, BrokerAccount, Execution, Order, Position


def account_list(*, user) -> QuerySet[BrokerAccount]:
    return BrokerAccount.objects.filter(owner=user).select_related("webhook_key")


def account_get(*, user, pk: int) -> BrokerAccount:
    return account_list(user=user).get(pk=pk)


def position_list(*, user, status: str | None = Position.Status.OPEN) -> QuerySet[Position]:
    qs = Position.objects.filter(account__owner=user).select_related("account")
    return qs.filter(status=status) if status else qs


def position_get(*, user, pk: int) -> Position:
    return position_list(user=user, status=None).get(pk=pk)


def order_list(*, user, account: BrokerAccount | None = None, status: str = "", side: str = "", symbol: str = "",
               since: date | None = None, until: date | None = None) -> QuerySet[Order]:
    """The user's orders, newest first; ``since``/``until`` are calendar days in the active (the user's) timezone."""
    qs = Order.objects.filter(account__owner=user).select_related("account").order_by("-created_at", "-id")
    if account is not None:
        qs = qs.filter(account=account)
    if status:
        qs = qs.filter(status=status)
    if side:
        qs = qs.filter(side=side)
    if symbol:
        qs = qs.filter(symbol__icontains=symbol.strip())
    if since:
        qs = qs.filter(created_at__gte=timezone.make_aware(datetime.combine(since, time.min)))
    if until:
        qs = qs.filter(created_at__lt=timezone.make_aware(datetime.combine(until + timedelta(days=1), time.min)))
    return qs


def execution_list(*, user) -> QuerySet[Execution]:
    return Execution.objects.filter(account__owner=user).select_related("account", "signal")


def position_snapshot(*, user) -> list[dict]:
    from brokers.live import position_event

    return [position_event(p) for p in position_list(user=user)]


ONBOARDING_COPIED = "webhook.copied"  # the AuditLog action the copy button records


def onboarding_steps(*, user) -> list[dict]:
    """The dashboard's first-run checklist, each step read from what the customer has done (no flags stored).

    Copying is known from the copy button's audit row, or from the key having been used (copied by hand).
    """
    from accounts.models import AuditLog
    from webhooks.models import Signal

    account = account_list(user=user).order_by("id").first()
    connected = account is not None
    copied = connected and (
        AuditLog.objects.filter(user=user, action=ONBOARDING_COPIED).exists()
        or AccountApiKey.objects.filter(account__owner=user, last_used__isnull=False).exists())
    alerted = connected and Signal.objects.filter(account__owner=user).exists()
    traded = connected and Execution.objects.filter(account__owner=user, status=Execution.Status.FILLED).exists()
    page = reverse("broker-account", args=[account.pk]) if connected else reverse("broker-account-new")
    return [
        {"key": "connect", "done": connected, "title": "Connect a broker",
         "help": "A paper account is enough to start: it fills alerts at market prices, no money involved.",
         "url": page if connected else reverse("broker-account-new"), "action": "Connect a broker"},
        {"key": "copy", "done": copied, "title": "Copy your webhook URL",
         "help": "Paste it into the Webhook URL field of a TradingView alert.", "url": page + "#webhook",
         "action": "Copy the webhook URL"},
        {"key": "alert", "done": alerted, "title": "Send a test alert",
         "help": "Fire a sample alert (or your TradingView alert) at the URL and see it arrive in the webhook log.",
         "url": page + "#test-alert", "action": "Send a test alert"},
        {"key": "trade", "done": traded, "title": "First trade",
         "help": "An alert that fills opens a position on this dashboard, with live P&L.",
         "url": page + "#webhook", "action": "See the alert formats"},
    ]


def money_by_currency(pairs) -> list[dict]:
    """``[(currency, amount), ...]`` summed per currency: amounts in different currencies are never added up."""
    totals: dict[str, Decimal] = {}
    for currency, amount in pairs:
        totals[currency] = totals.get(currency, Decimal("0")) + (amount or Decimal("0"))
    return [{"currency": c, "amount": a} for c, a in sorted(totals.items())]


def realized_since(*, user, since) -> list[dict]:
    """Realized P&L of positions closed since ``since`` (an aware datetime: the start of the user's day)."""
    rows = (Position.objects.filter(account__owner=user, status=Position.Status.CLOSED, closed_at__gte=since)
            .values("account__currency").annotate(total=Sum("realized_pnl")).order_by())
    return money_by_currency((r["account__currency"], r["total"]) for r in rows)


def equity_curve(*, user, currency: str, days: int = 90, limit: int = 2000) -> list[list]:
    """Cumulative realized P&L in ``currency`` after each close of the last ``days`` days: ``[[unix_s, "pnl"]]``.

    The first point is the start of the window at 0, so a single trade still draws a line.
    """
    since = timezone.now() - timedelta(days=days)
    closes = (Position.objects.filter(account__owner=user, account__currency=currency, status=Position.Status.CLOSED,
                                      closed_at__gte=since)
              .order_by("closed_at").values_list("closed_at", "realized_pnl")[:limit])
    total, points = Decimal("0"), [[int(since.timestamp()), "0"]]
    for closed_at, pnl in closes:
        total += pnl
        points.append([int(closed_at.timestamp()), str(total)])
    return points


# --- staff only: the admin live page reads every customer's rows (the view is staff-gated) ---------------------


def admin_executions_recent(*, limit: int = 50) -> QuerySet[Execution]:
    return Execution.objects.select_related("account__owner").order_by("-created_at")[:limit]


def admin_open_positions() -> dict[str, list]:
    """Every open position's unrealized P&L and currency, keyed by id: the live page's total is kept from these."""
    rows = (Position.objects.filter(status=Position.Status.OPEN)
            .values_list("id", "side", "qty", "avg_price", "last_price", "account__currency"))
    out = {}
    for pk, side, qty, avg, last, currency in rows:
        pnl = Decimal("0") if last is None else (last - avg) * qty * (1 if side == Position.Side.LONG else -1)
        out[str(pk)] = [str(pnl), currency]
    return out


def admin_bot_counters(*, since) -> list[dict]:
    """Per bot since ``since``: alerts received, and its subscribers' executions filled / rejected or failed."""
    from bots.models import Bot
    from webhooks.models import Signal

    signals = dict(Signal.objects.filter(bot__isnull=False, received_at__gte=since).values("bot_id")
                   .annotate(n=Count("id")).values_list("bot_id", "n"))
    outcomes: dict[int, dict[str, int]] = {}
    rows = (Execution.objects.filter(subscription__isnull=False, created_at__gte=since)
            .values("subscription__bot_id", "status").annotate(n=Count("id")).order_by())
    for row in rows:
        counts = outcomes.setdefault(row["subscription__bot_id"], {})
        counts[row["status"]] = counts.get(row["status"], 0) + row["n"]
    return [{"bot": bot, "signals": signals.get(bot.pk, 0),
             "filled": outcomes.get(bot.pk, {}).get(Execution.Status.FILLED, 0),
             "refused": sum(outcomes.get(bot.pk, {}).get(s, 0) for s in (Execution.Status.REJECTED,
                                                                         Execution.Status.FAILED))}
            for bot in Bot.objects.order_by("name")]
