"""Broker accounts, their webhook keys, executions, orders, positions and instruments.

Quantities and prices are Decimal; times are aware UTC.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from encrypted_model_fields.fields import EncryptedCharField, EncryptedTextField

QTY = {"max_digits": 24, "decimal_places": 8}
MONEY = {"max_digits": 20, "decimal_places": 4}


class Broker(models.TextChoices):
    PAPER = "paper", "Paper"
    KITE = "kite", "Zerodha Kite"
    BINANCE = "binance", "Binance"


class BrokerAccount(models.Model):
    class Mode(models.TextChoices):
        PAPER = "paper", "Paper"
        LIVE = "live", "Live"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        LOGIN_NEEDED = "login_needed", "Login needed"
        ERROR = "error", "Error"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="broker_accounts")
    broker = models.CharField(max_length=16, choices=Broker.choices, default=Broker.PAPER)
    label = models.CharField(max_length=80)
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.PAPER)
    enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    status_message = models.CharField(max_length=300, blank=True)
    currency = models.CharField(max_length=8, default="INR")
    # Paper: starting capital; balance = capital + realized P&L. Live: last value read from the broker.
    paper_capital = models.DecimalField(**MONEY, default=Decimal(settings.PAPER_DEFAULT_CAPITAL))
    balance = models.DecimalField(**MONEY, default=Decimal("0"))
    equity = models.DecimalField(**MONEY, default=Decimal("0"))
    # Credentials, encrypted at rest (a database dump holds only Fernet tokens).
    api_key = EncryptedCharField(max_length=200, blank=True)
    api_secret = EncryptedCharField(max_length=200, blank=True)
    access_token = EncryptedTextField(blank=True)
    options = models.JSONField(default=dict, blank=True,
                               help_text="Broker-specific settings (product, proxy, testnet…)")
    last_sync = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner_id", "id"]

    def __str__(self) -> str:
        return f"{self.label} ({self.get_broker_display()}, {self.mode})"

    @property
    def is_paper(self) -> bool:
        return self.broker == Broker.PAPER or self.mode == self.Mode.PAPER


class AccountApiKey(models.Model):
    """The secret a TradingView alert presents. Stored as a SHA-256 hash; shown once at creation."""

    account = models.OneToOneField(BrokerAccount, on_delete=models.CASCADE, related_name="webhook_key")
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.masked

    @property
    def masked(self) -> str:
        return f"{self.prefix}{'•' * 8}"


class Instrument(models.Model):
    """A tradable contract as the broker lists it (Kite instruments CSV, Binance exchangeInfo)."""

    broker = models.CharField(max_length=16, choices=Broker.choices)
    exchange = models.CharField(max_length=16)
    tradingsymbol = models.CharField(max_length=64)
    name = models.CharField(max_length=64, blank=True, db_index=True)
    instrument_token = models.BigIntegerField(null=True, blank=True)
    instrument_type = models.CharField(max_length=8, blank=True)
    segment = models.CharField(max_length=16, blank=True)
    expiry = models.DateField(null=True, blank=True)
    strike = models.DecimalField(**MONEY, null=True, blank=True)
    tick_size = models.DecimalField(**QTY, default=Decimal("0.05"))
    lot_size = models.DecimalField(**QTY, default=Decimal("1"))
    step_size = models.DecimalField(**QTY, null=True, blank=True)
    min_qty = models.DecimalField(**QTY, null=True, blank=True)
    min_notional = models.DecimalField(**MONEY, null=True, blank=True)
    freeze_qty = models.DecimalField(**QTY, null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["broker", "exchange", "tradingsymbol"], name="uniq_instrument"),
        ]
        indexes = [models.Index(fields=["broker", "name", "instrument_type", "strike", "expiry"])]

    def __str__(self) -> str:
        return f"{self.exchange}:{self.tradingsymbol}"


class Quote(models.Model):
    """Last known price of a symbol per broker: fills paper orders and marks positions to market."""

    broker = models.CharField(max_length=16, choices=Broker.choices)
    symbol = models.CharField(max_length=64)
    price = models.DecimalField(**QTY)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["broker", "symbol"], name="uniq_quote")]

    def __str__(self) -> str:
        return f"{self.symbol} {self.price}"


class Execution(models.Model):
    """One unit of work on one account: a signal for that account, a manual close, an emergency stop.

    At most one per (signal, account). Its status is the answer to "what happened to my alert".
    """

    class Kind(models.TextChoices):
        SIGNAL = "signal", "Signal"
        CLOSE = "close", "Manual close"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        FILLED = "filled", "Filled"
        PLACED = "placed", "Placed (open at broker)"
        REJECTED = "rejected", "Rejected"
        FAILED = "failed", "Failed"

    TERMINAL = (Status.FILLED, Status.PLACED, Status.REJECTED, Status.FAILED)

    # Looked up through uniq_execution_per_signal_account (signal first): no index of its own.
    signal = models.ForeignKey("webhooks.Signal", null=True, blank=True, on_delete=models.CASCADE, db_index=False,
                               related_name="executions")
    account = models.ForeignKey(BrokerAccount, on_delete=models.CASCADE, related_name="executions")
    # A bot signal's execution for one subscriber (seed 004 ``bot_signal_executions``).
    subscription = models.ForeignKey("bots.Subscription", null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="executions")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.SIGNAL)
    intent = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)  # indexed in Meta
    reason_code = models.CharField(max_length=48, blank=True)
    reason = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Webhook receipt → broker acknowledgement of the main order, in milliseconds.
    latency_ms = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    # Main-leg fill against the price the signal carried, signed so that positive is worse for the customer
    # (paid more on a buy, got less on a sell): in price units and in basis points of the signal price.
    slippage = models.DecimalField(**QTY, null=True, blank=True)
    slippage_bps = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["signal", "account"], condition=Q(signal__isnull=False),
                                    name="uniq_execution_per_signal_account"),
        ]
        indexes = [
            # A plain btree (``db_index`` on a CharField also builds a pattern-matching twin that nothing uses, and
            # every index is written again on each of an execution's non-HOT status updates).
            models.Index(fields=["status"], name="execution_status"),
            # Account alerts waiting for a worker, oldest first (brokers.services.batch.executions_drain): an index
            # scan in id order over the few pending rows, whose dead entries each scan marks for skipping.
            models.Index(fields=["id"], name="execution_waiting_alert",
                         condition=Q(status="pending", attempts=0, kind="signal", subscription__isnull=True)),
            # The accounts a worker is running an execution on right now (a handful of rows): a drain leaves their
            # waiting alerts to that worker instead of queueing behind its locks (batch._waiting).
            models.Index(fields=["account"], name="execution_running_account", condition=Q(status="running")),
        ]

    def __str__(self) -> str:
        return f"Execution {self.pk} ({self.status})"


class Order(models.Model):
    """An order we send (or sent) to a broker. The row is reserved *before* the broker call.

    Unique on (execution, leg): a retried or redelivered task finds its reservation and never places
    the same leg twice. ``client_order_id`` is derived from the execution id and the leg, so it is the
    same on every attempt (Binance newClientOrderId, Kite tag).
    """

    class Side(models.TextChoices):
        BUY = "buy", "Buy"
        SELL = "sell", "Sell"

    class Type(models.TextChoices):
        MARKET = "market", "Market"
        LIMIT = "limit", "Limit"
        STOP = "stop", "Stop"
        TAKE_PROFIT = "take_profit", "Take profit"

    class Status(models.TextChoices):
        RESERVED = "reserved", "Reserved"
        SENDING = "sending", "Sending"
        OPEN = "open", "Open"
        FILLED = "filled", "Filled"
        CANCELLED = "cancelled", "Cancelled"
        REJECTED = "rejected", "Rejected"
        FAILED = "failed", "Failed"

    execution = models.ForeignKey(Execution, null=True, blank=True, on_delete=models.CASCADE, related_name="orders")
    account = models.ForeignKey(BrokerAccount, on_delete=models.CASCADE, related_name="orders")
    leg = models.CharField(max_length=16)
    client_order_id = models.CharField(max_length=36, unique=True)
    broker_order_id = models.CharField(max_length=64, blank=True)
    symbol = models.CharField(max_length=64)
    side = models.CharField(max_length=4, choices=Side.choices)
    order_type = models.CharField(max_length=16, choices=Type.choices, default=Type.MARKET)
    qty = models.DecimalField(**QTY)
    price = models.DecimalField(**QTY, null=True, blank=True)
    trigger_price = models.DecimalField(**QTY, null=True, blank=True)
    filled_qty = models.DecimalField(**QTY, default=Decimal("0"))
    avg_price = models.DecimalField(**QTY, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RESERVED, db_index=True)
    reject_reason = models.TextField(blank=True)
    raw = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    filled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["execution", "leg"], name="uniq_order_leg")]
        indexes = [models.Index(fields=["account", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.side} {self.qty} {self.symbol} ({self.status})"


class Position(models.Model):
    """A net position per (account, symbol). Quantity is unsigned; ``side`` says long or short."""

    class Side(models.TextChoices):
        LONG = "long", "Long"
        SHORT = "short", "Short"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    account = models.ForeignKey(BrokerAccount, on_delete=models.CASCADE, related_name="positions")
    symbol = models.CharField(max_length=64)
    side = models.CharField(max_length=8, choices=Side.choices)
    qty = models.DecimalField(**QTY, default=Decimal("0"))
    avg_price = models.DecimalField(**QTY, default=Decimal("0"))
    last_price = models.DecimalField(**QTY, null=True, blank=True)
    realized_pnl = models.DecimalField(**MONEY, default=Decimal("0"))
    stop_loss = models.DecimalField(**QTY, null=True, blank=True)
    take_profit = models.DecimalField(**QTY, null=True, blank=True)
    # Options legs: {"underlying", "strike", "option_type", "role": "main"|"hedge", "lots", "lot_size"}.
    meta = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN, db_index=True)
    opened_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(fields=["account", "symbol"], condition=Q(status="open"),
                                    name="uniq_open_position"),
        ]

    def __str__(self) -> str:
        return f"{self.side} {self.qty} {self.symbol}"

    @property
    def unrealized_pnl(self) -> Decimal:
        if self.last_price is None or self.status != self.Status.OPEN:
            return Decimal("0")
        sign = 1 if self.side == self.Side.LONG else -1
        return (self.last_price - self.avg_price) * self.qty * sign

    @property
    def breakeven(self) -> Decimal | None:
        """Options main leg: the underlying's breakeven net of the hedge (``brokers.services.breakeven``)."""
        value = (self.meta or {}).get("breakeven")
        return Decimal(value) if value else None


class PaperOrder(models.Model):
    """The paper broker's own order book: what the simulated exchange accepted, keyed by client id."""

    account = models.ForeignKey(BrokerAccount, on_delete=models.CASCADE, related_name="paper_orders")
    client_order_id = models.CharField(max_length=36)
    symbol = models.CharField(max_length=64)
    side = models.CharField(max_length=4)
    qty = models.DecimalField(**QTY)
    price = models.DecimalField(**QTY)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "client_order_id"], name="uniq_paper_order")]

    def __str__(self) -> str:
        return f"{self.client_order_id}: {self.side} {self.qty} {self.symbol} @ {self.price}"
