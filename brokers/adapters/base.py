"""The broker interface: every adapter (paper, kite, binance) implements exactly this.

Errors are classified so the execution engine can act on them without knowing the broker:
``BrokerRejected`` is final (the broker said no), ``BrokerTransient`` may be retried with backoff,
``BrokerAmbiguous`` means the order may or may not exist (timeout, 5xx, unknown status) and must be
looked up by client id before anything is resent, ``BrokerAuthError`` means the session is dead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from decimal import Decimal


class BrokerError(Exception):
    def __init__(self, message: str, *, code: str = "", raw: dict | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.raw = raw or {}


class BrokerRejected(BrokerError):
    """The broker refused the request; resending the same request will not help."""


class BrokerTransient(BrokerError):
    """Rate limit, network blip, maintenance: safe to retry the same call later."""

    def __init__(self, message: str, *, code: str = "", raw: dict | None = None, retry_after: float | None = None):
        super().__init__(message, code=code, raw=raw)
        self.retry_after = retry_after


class BrokerAmbiguous(BrokerError):
    """We do not know whether the order reached the broker: look it up by client id first."""


class BrokerAuthError(BrokerError):
    """Credentials or session are invalid (e.g. Kite's daily token expired)."""


@dataclass(frozen=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    side: str  # "buy" | "sell"
    qty: Decimal
    order_type: str = "market"
    price: Decimal | None = None  # limit price
    trigger_price: Decimal | None = None
    reduce_only: bool = False
    # The price the signal carried (paper fills at it when given).
    reference_price: Decimal | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OrderResult:
    broker_order_id: str
    status: str  # "filled" | "open" | "rejected" | "cancelled"
    filled_qty: Decimal = Decimal("0")
    avg_price: Decimal | None = None
    reject_reason: str = ""
    raw: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BrokerPosition:
    symbol: str
    qty: Decimal  # signed: + long, - short
    avg_price: Decimal
    last_price: Decimal | None = None


@dataclass(frozen=True)
class BrokerFill:
    """Trades the broker reports on one symbol: one fill (Binance's trade list) or, where the broker only gives
    the day's totals (Kite's positions), the day's buys or sells at their average price (``order_id`` empty)."""

    symbol: str
    side: str  # "buy" | "sell"
    qty: Decimal  # unsigned
    price: Decimal  # the fill's price, or the average of the day's fills on that side
    order_id: str = ""  # the broker's order id ("" for a day's total)
    trade_id: int = 0  # the broker's increasing trade id (0 when unknown)


@dataclass(frozen=True)
class Balance:
    currency: str
    cash: Decimal
    equity: Decimal


class BrokerAdapter(ABC):
    # Seconds ``place_order`` waits for a market order to fill before answering "open" (None: it never waits,
    # the answer is final at once). The engine quotes it when a leg that had to fill did not.
    fill_wait: float | None = None

    def __init__(self, account):
        self.account = account

    @abstractmethod
    def place_order(self, request: OrderRequest) -> OrderResult: ...

    @abstractmethod
    def cancel_order(self, *, client_order_id: str, broker_order_id: str = "", symbol: str = "") -> None: ...

    @abstractmethod
    def order_status(self, *, client_order_id: str, symbol: str = "") -> OrderResult | None:
        """The order with this client id as the broker knows it, or None if it never arrived."""

    @abstractmethod
    def positions(self) -> list[BrokerPosition]: ...

    @abstractmethod
    def last_prices(self, symbols: list[str]) -> dict[str, Decimal]: ...

    @abstractmethod
    def balance(self) -> Balance: ...

    @abstractmethod
    def validate_credentials(self) -> None:
        """Raise BrokerAuthError (or BrokerRejected) with a message the customer can act on."""

    def fills(self, symbol: str, *, since=None) -> list[BrokerFill] | None:
        """The account's trades on ``symbol`` (as TradeFlow books it) since ``since`` (an aware datetime), oldest
        first, as the broker's trade book tells them; None when this broker cannot tell (the default). Used to book
        a position closed in the broker's own app at its real exit price (``brokers.services.exit_price``)."""
        return None

    # Broker-side stop loss / take profit. Not abstract: for a broker without them here (paper, Kite) the
    # levels live only on TradeFlow's position record.
    def place_protection(self, *, symbol: str, entry_side: str, qty: Decimal, client_order_id: str,
                         stop_loss: Decimal | None = None, take_profit: Decimal | None = None,
                         extra: dict | None = None) -> list[OrderResult]:
        """Place the stop/target orders of a filled entry; safe to call again for the same entry (a retry)."""
        return []

    def cancel_protection(self, *, symbol: str, extra: dict | None = None) -> None:
        """Cancel TradeFlow's open stop/target orders on ``symbol`` (after a close)."""
        return None
