"""Per-user risk configuration (seed 003 ``risk_config``), news calendar and the global kill switch."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

from accounts.models import TIMEZONE_CHOICES

MONEY = {"max_digits": 20, "decimal_places": 4}
WEEKDAYS = "0,1,2,3,4"  # Monday..Friday (datetime.weekday numbering)


class RiskConfig(models.Model):
    """A user's entry rules. Empty limits mean "no limit". The row is also the per-user lock that serializes
    risk decisions (``select_for_update``), so concurrent entries cannot exceed a limit together."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="risk_config")
    enabled = models.BooleanField(default=True, help_text="Off: no entry rule below is checked")
    max_daily_loss = models.DecimalField(**MONEY, null=True, blank=True,
                                         help_text="Realized + unrealized loss today, in the account's currency")
    flatten_on_daily_loss = models.BooleanField(default=False,
                                                help_text="Close open positions when the daily loss limit is hit")
    max_trades_per_day = models.PositiveIntegerField(null=True, blank=True)
    max_open_positions = models.PositiveIntegerField(null=True, blank=True)
    max_position_value = models.DecimalField(**MONEY, null=True, blank=True)
    trading_hours_enabled = models.BooleanField(default=False)
    trading_hours_start = models.TimeField(default="09:15")
    trading_hours_end = models.TimeField(default="15:30")
    trading_hours_timezone = models.CharField(max_length=64, choices=TIMEZONE_CHOICES, default="Asia/Kolkata")
    trading_days = models.CharField(max_length=20, default=WEEKDAYS, blank=True,
                                    help_text="Weekdays as numbers, Monday=0: e.g. 0,1,2,3,4")
    denied_instruments = models.TextField(blank=True, help_text="Symbols, comma or newline separated")
    allowed_instruments = models.TextField(blank=True, help_text="If set, only these symbols may be entered")
    news_lockout_enabled = models.BooleanField(default=False)
    news_minutes_before = models.PositiveIntegerField(default=5)
    news_minutes_after = models.PositiveIntegerField(default=5)
    news_markets = models.CharField(max_length=100, blank=True,
                                    help_text="Currencies/markets to watch (e.g. USD,INR); empty: all")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Risk config of {self.user}"


class CalendarEvent(models.Model):
    class Impact(models.TextChoices):
        LOW = "low", "Low"
        MEDIUM = "medium", "Medium"
        HIGH = "high", "High"

    starts_at = models.DateTimeField(db_index=True)
    market = models.CharField(max_length=16, blank=True, help_text="Currency or market, e.g. USD, INR")
    impact = models.CharField(max_length=8, choices=Impact.choices, default=Impact.HIGH)
    title = models.CharField(max_length=200)
    uid = models.CharField(max_length=200, blank=True, help_text="Source id (ICS UID); re-imports update it")

    class Meta:
        ordering = ["starts_at"]
        constraints = [models.UniqueConstraint(fields=["uid"], condition=~models.Q(uid=""), name="uniq_event_uid")]

    def __str__(self) -> str:
        return f"{self.starts_at:%Y-%m-%d %H:%M} {self.market} {self.title}"


class TradingHalt(models.Model):
    """The global kill switch, as a history: the latest row is the current state."""

    halted = models.BooleanField()
    reason = models.CharField(max_length=300, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{'HALTED' if self.halted else 'resumed'} at {self.created_at:%Y-%m-%d %H:%M} ({self.reason})"


class RiskAdmission(models.Model):
    """An entry the risk engine let through: the trade slot it holds counts against the daily trade limit and,
    until its execution ends, against open positions (its position may not exist yet)."""

    execution = models.OneToOneField("brokers.Execution", on_delete=models.CASCADE, related_name="risk_admission")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    value = models.DecimalField(**MONEY, default=Decimal("0"))
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"admitted execution {self.execution_id}"
