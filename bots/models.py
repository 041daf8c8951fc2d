"""Signal bots (seed 004): an admin's strategy with one master webhook, and the customers subscribed to it.

A bot alert is stored as a ``webhooks.Signal`` (``Signal.bot``) and becomes one ``brokers.Execution`` per
subscription (``Execution.subscription``): the seed's ``bot_signals`` / ``bot_signal_executions`` are those two
tables, so bot trades run through the same exactly-once engine as every other signal.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from encrypted_model_fields.fields import EncryptedCharField

PCT = {"max_digits": 6, "decimal_places": 2, "validators": [MinValueValidator(0), MaxValueValidator(1000)]}
MONEY = {"max_digits": 20, "decimal_places": 4, "validators": [MinValueValidator(Decimal("0"))]}
LEVERAGE = [MinValueValidator(1), MaxValueValidator(125)]


def validate_rate(value: str) -> None:
    from django_ratelimit.core import _split_rate

    try:
        count, seconds = _split_rate(value)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ValidationError(f"{value!r} is not a rate: write it like 10/m, 100/h or 5/10s") from exc
    if count < 1 or seconds < 1:
        raise ValidationError("A rate needs at least one alert per period")


class Bot(models.Model):
    class MarketType(models.TextChoices):
        SPOT = "spot", "Spot"
        FUTURES = "futures", "Futures"
        OPTIONS = "options", "Options"

    class BrokerChoice(models.TextChoices):
        BINANCE = "binance", "Binance"
        KITE = "kite", "Zerodha Kite"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        ARCHIVED = "archived", "Archived"

    class MarginCurrency(models.TextChoices):
        USD = "USD", "USD"
        INR = "INR", "INR"

    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    market_type = models.CharField(max_length=8, choices=MarketType.choices, default=MarketType.FUTURES)
    broker = models.CharField(max_length=16, choices=BrokerChoice.choices, default=BrokerChoice.BINANCE)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    webhook_path = models.SlugField(max_length=64, unique=True, blank=True,
                                    help_text="The last part of the master webhook URL; generated if left blank")
    # The master secret TradingView sends in the body. Encrypted at rest (Fernet); shown once.
    secret = EncryptedCharField(max_length=200, editable=False)
    secret_rotated_at = models.DateTimeField(null=True, blank=True)
    default_leverage = models.PositiveSmallIntegerField(default=1, validators=LEVERAGE)
    default_margin = models.DecimalField(default=Decimal("100"), **MONEY,
                                         help_text="Margin per entry; the position is margin × leverage")
    margin_currency = models.CharField(max_length=3, choices=MarginCurrency.choices, default=MarginCurrency.USD)
    default_lots = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)],
                                               help_text="Options bots: lots per entry")
    default_stop_loss_pct = models.DecimalField(null=True, blank=True, **PCT,
                                                help_text="Stop loss, % from the fill price (blank or 0: none)")
    default_take_profit_pct = models.DecimalField(null=True, blank=True, **PCT,
                                                  help_text="Take profit, % from the fill price (blank or 0: none)")
    symbols = models.CharField(max_length=500, blank=True,
                               help_text="Symbol allow-list, comma separated (e.g. BTCUSDT, ETHUSDT); blank: any")
    rate_limit = models.CharField(max_length=16, default="10/m", validators=[validate_rate],
                                  help_text="Alerts accepted per period, e.g. 10/m")
    max_lag_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Refuse alerts whose `timestamp` is older than this (blank: no check)")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.broker == self.BrokerChoice.KITE and self.market_type != self.MarketType.OPTIONS:
            raise ValidationError({"market_type": "Zerodha Kite bots trade NSE index options: choose Options"})
        if self.broker == self.BrokerChoice.BINANCE and self.market_type == self.MarketType.OPTIONS:
            raise ValidationError({"market_type": "Binance bots trade spot or futures, not options"})
        self.symbols = ", ".join(self.allowed_symbols)

    @property
    def allowed_symbols(self) -> list[str]:
        parts = self.symbols.replace(";", ",").replace("\n", ",").split(",")
        return [s.strip().upper() for s in parts if s.strip()]

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Subscription(models.Model):
    """A customer's broker account following a bot, with the customer's own overrides and limits."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        CLOSE_ONLY = "close_only", "Close only (exits only)"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="bot_subscriptions")
    bot = models.ForeignKey(Bot, on_delete=models.CASCADE, related_name="subscriptions")
    account = models.ForeignKey("brokers.BrokerAccount", on_delete=models.CASCADE, related_name="bot_subscriptions")
    # Overrides: None means "the bot's default"; 0 is a value (e.g. no stop loss).
    leverage = models.PositiveSmallIntegerField(null=True, blank=True, validators=LEVERAGE)
    margin = models.DecimalField(null=True, blank=True, **MONEY)
    lots = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    stop_loss_pct = models.DecimalField(null=True, blank=True, **PCT)
    take_profit_pct = models.DecimalField(null=True, blank=True, **PCT)
    max_daily_loss = models.DecimalField(null=True, blank=True, **MONEY,
                                         help_text="Stop new entries after losing this much today (blank: no limit)")
    max_concurrent_positions = models.PositiveIntegerField(null=True, blank=True,
                                                           help_text="Open positions from this bot at once")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["bot", "account"], condition=~Q(status="unsubscribed"),
                                    name="uniq_live_subscription_per_bot_account"),
        ]
        indexes = [models.Index(fields=["bot", "status"])]

    def __str__(self) -> str:
        return f"{self.user} → {self.bot} ({self.status})"
