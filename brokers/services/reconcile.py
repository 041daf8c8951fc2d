"""Reconcile: live positions closed outside TradeFlow are booked closed, without sending anything.

A trader may close a position in the broker's own app (Kite web, the Binance app). Until TradeFlow comes to close it
itself (``closed_outside``), the dashboard would show a position that no longer exists, its P&L still moving. So
Celery beat runs ``positions_reconcile_task`` every ``RECONCILE_SECONDS``: per live Kite or Binance futures account
with open positions, the broker's positions (``adapter.positions()``) are compared with TradeFlow's open ones, by
symbol as the adapter names them (Kite reports NFO/NSE contracts bare, TradeFlow books them ``NFO:…``).

* The broker holds less (or nothing): the difference is booked closed at the broker's exit price when its trade
  book tells it unambiguously (``brokers.services.exit_price``: Kite's day positions, Binance's futures trade list),
  else at the last known price, exactly as ``closed_outside`` books it. A filled CLOSE execution with reason code
  ``closed_outside`` tells the customer which price was booked (with the last known price: check the real exit in
  the broker's trade book). The dashboard gets the position and the execution live, like a fill.
* The broker holds more, or a symbol TradeFlow does not hold: someone traded in the broker's app. TradeFlow does
  not adopt foreign positions: it is logged and returned, nothing is booked.

Grace: brokers report positions with a delay, so an account with an order or execution in flight, or an order
placed or filled in the last ``RECONCILE_GRACE_SECONDS``, is left alone this round, and so is a position with a
close in flight. Reconcile never sends an order. Skipped: paper, disabled and login-needed accounts, live accounts
while ``LIVE_TRADING_ENABLED`` is off, Binance spot (it holds coins, not positions: a coin balance moves with fees
and other trading) and Kite cash-market (NSE/BSE) positions, which become holdings overnight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from brokers.adapters import get_adapter
from brokers.adapters.base import BrokerAdapter, BrokerAuthError, BrokerError
from brokers.models import Broker, BrokerAccount, Execution, Order, Position
from brokers.services.closed_outside import ClosedOutside, position_book_closed_outside
from brokers.services.execution import CLOSE_IN_FLIGHT, close_in_flight
from brokers.services.exit_price import exit_price

log = logging.getLogger(__name__)
ZERO = Decimal("0")
IN_FLIGHT_ORDERS = (Order.Status.RESERVED, Order.Status.SENDING, Order.Status.OPEN)
ENDED_EXECUTIONS = (Execution.Status.FILLED, Execution.Status.REJECTED, Execution.Status.FAILED)
KITE_CASH_EXCHANGES = {"NSE", "BSE"}  # CNC buys move to holdings overnight: gone from positions, not closed


@dataclass(frozen=True)
class Foreign:
    """What the broker holds beyond TradeFlow's books (signed: + long, - short)."""

    symbol: str
    qty: Decimal


@dataclass
class ReconcileResult:
    account_id: int
    checked: int = 0  # open TradeFlow positions compared
    booked: list[ClosedOutside] = field(default_factory=list)
    foreign: list[Foreign] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the account, or a position, left alone this round, and why
    executions: list[int] = field(default_factory=list)  # the CLOSE executions that tell the customer


def reconcile_accounts() -> QuerySet[BrokerAccount]:
    """The accounts the beat task reconciles: live Kite / Binance, switched on, logged in, with an open position
    (an account without one has nothing to book, and Binance's request weight is shared by every customer)."""
    if not settings.LIVE_TRADING_ENABLED:
        return BrokerAccount.objects.none()
    return (BrokerAccount.objects.filter(mode=BrokerAccount.Mode.LIVE, enabled=True,
                                         broker__in=(Broker.KITE, Broker.BINANCE))
            .exclude(status=BrokerAccount.Status.LOGIN_NEEDED)
            .filter(pk__in=Position.objects.filter(status=Position.Status.OPEN).values("account_id"))
            .order_by("pk"))


def account_not_reconciled(account: BrokerAccount, adapter: BrokerAdapter | None = None) -> str | None:
    """Why this account is not reconciled at all, or None."""
    if account.is_paper:
        return "paper account: TradeFlow's books are the broker"
    if account.broker not in (Broker.KITE, Broker.BINANCE):
        return f"{account.get_broker_display()} accounts are not reconciled"
    if not account.enabled:
        return "account switched off"
    if account.status == BrokerAccount.Status.LOGIN_NEEDED:
        return "broker login needed"
    if not settings.LIVE_TRADING_ENABLED:
        return "live trading is switched off"
    if account.broker == Broker.BINANCE:
        try:
            market = (adapter or get_adapter(account)).market_for()
        except BrokerError as exc:
            return exc.message
        if market != "futures":
            return "Binance spot holds coins, not positions: not reconciled"
    return None


def account_busy(account: BrokerAccount, *, now: datetime) -> str | None:
    """Why the broker's positions may not yet show TradeFlow's own trading on this account, or None."""
    grace = settings.RECONCILE_GRACE_SECONDS
    if Execution.objects.filter(account=account, status__in=CLOSE_IN_FLIGHT).exists():
        return "an execution is in flight"
    orders = Order.objects.filter(account=account)
    # An order left "sending" by a failed execution is in doubt, not in flight: the customer was told to check it.
    if orders.filter(status__in=IN_FLIGHT_ORDERS).exclude(execution__status__in=ENDED_EXECUTIONS).exists():
        return "an order is in flight"
    cutoff = now - timedelta(seconds=grace)
    if orders.filter(Q(created_at__gte=cutoff) | Q(filled_at__gte=cutoff)).exists():
        return f"an order was placed or filled in the last {grace} s (brokers report positions with a delay)"
    return None


def positions_reconcile(account: BrokerAccount, *, now: datetime | None = None) -> ReconcileResult:
    """Compare one account's open positions with its broker's and book what was closed outside TradeFlow.

    Books only, never sends an order. Safe to run twice, and at once: each booking locks the position and compares
    again, so what one run booked the other finds already matching."""
    result = ReconcileResult(account_id=account.pk)
    adapter = get_adapter(account)
    why = account_not_reconciled(account, adapter)
    if why:
        result.skipped.append(why)
        return result
    positions = list(Position.objects.filter(account=account, status=Position.Status.OPEN).order_by("id"))
    result.checked = len(positions)
    now = now or timezone.now()
    if why := account_busy(account, now=now):
        result.skipped.append(why)
        return result
    try:
        held = _held(adapter)
    except BrokerAuthError as exc:
        BrokerAccount.objects.filter(pk=account.pk).update(
            status=BrokerAccount.Status.LOGIN_NEEDED, status_message=f"Broker login needed: {exc.message}"[:300])
        result.skipped.append(exc.message)
        return result
    except BrokerError as exc:  # a blip or a rate limit: the next round asks again
        log.warning("reconcile: no positions from account %s: %s", account.pk, exc.message)
        result.skipped.append(exc.message)
        return result
    keyed, left = _keyed(account, adapter, positions, result)
    for key in left:
        held.pop(key, None)
    for key, position in keyed.items():
        broker_qty = held.pop(key, ZERO)
        ours = broker_qty if position.side == Position.Side.LONG else -broker_qty
        if ours < position.qty:
            _book(account, adapter, position, broker_qty, now=now, result=result)
        if ours > position.qty:
            extra = ours - position.qty
            result.foreign.append(Foreign(key, extra if position.side == Position.Side.LONG else -extra))
        elif ours < 0:  # the other side: what TradeFlow held is gone, and a position of someone else's is there
            result.foreign.append(Foreign(key, broker_qty))
    result.foreign += [Foreign(key, qty) for key, qty in held.items()]
    for foreign in result.foreign:
        _log_foreign(account, foreign)
    return result


def _held(adapter: BrokerAdapter) -> dict[str, Decimal]:
    held: dict[str, Decimal] = {}
    for row in adapter.positions():
        held[row.symbol] = held.get(row.symbol, ZERO) + row.qty
    return {symbol: qty for symbol, qty in held.items() if qty}


def _keyed(account: BrokerAccount, adapter: BrokerAdapter, positions: list[Position],
           result: ReconcileResult) -> tuple[dict[str, Position], set[str]]:
    """TradeFlow's open positions by the symbol the adapter's ``positions()`` reports them under, and the keys left
    alone this round (the broker's rows under them are neither booked against nor reported as foreign)."""
    keyed: dict[str, Position] = {}
    left: set[str] = set()
    for position in positions:
        key = position.symbol
        if account.broker == Broker.KITE:
            # The adapter's own mapping (exchange from the prefix, else the instruments list), so both sides are
            # named alike: ``NFO:NIFTY25D3025000PE`` here is ``NIFTY25D3025000PE`` in Kite's positions.
            try:
                exchange, tradingsymbol = adapter._locate(position.symbol, {})
            except BrokerError as exc:  # not in the instruments list: this position waits, the others go on
                result.skipped.append(f"{position.symbol}: {exc.message}")
                continue
            key = adapter._display(exchange, tradingsymbol)
            if exchange in KITE_CASH_EXCHANGES:
                result.skipped.append(f"{position.symbol}: cash-market positions become holdings overnight; "
                                      "not reconciled")
                left.add(key)
                continue
        elif position.stop_loss is not None or position.take_profit is not None:
            # Binance holds this position's stop / target: the stop watcher books it when the exchange (or the app)
            # closes it, every few seconds, and cancels the other order of the pair, which reconcile would leave
            # behind to close the symbol's next position.
            result.skipped.append(f"{position.symbol}: has a stop loss / take profit at Binance; the stop watcher "
                                  "books its close")
            left.add(key)
            continue
        if key in keyed or key in left:  # two open rows naming one contract: whose is the broker's quantity?
            result.skipped.append(f"{position.symbol}: two open positions name {key}; not reconciled")
            keyed.pop(key, None)
            left.add(key)
            continue
        keyed[key] = position
    return keyed, left


def _book(account: BrokerAccount, adapter: BrokerAdapter, position: Position, broker_qty: Decimal, *,
          now: datetime, result: ReconcileResult) -> None:
    # The broker's exit price is asked for before the row is locked (no network call under the lock) and used only
    # if the quantity gone is still the same once locked.
    ours = broker_qty if position.side == Position.Side.LONG else -broker_qty
    asked = position.qty - max(ours, ZERO)
    price = exit_price(account, adapter, position, asked, now=now)
    with transaction.atomic():
        locked = Position.objects.select_for_update().filter(pk=position.pk, status=Position.Status.OPEN).first()
        if locked is None:
            return
        if close_in_flight(locked) is not None:
            result.skipped.append(f"{locked.symbol}: a close is in flight")
            return
        # Checked again under the lock: an order started since the first check books itself.
        if why := account_busy(account, now=now):
            result.skipped.append(f"{locked.symbol}: {why}")
            return
        ours = broker_qty if locked.side == Position.Side.LONG else -broker_qty
        gone = locked.qty - max(ours, ZERO)
        if gone <= 0:
            return
        booked = position_book_closed_outside(account=account, symbol=locked.symbol, qty=gone,
                                              price=price if gone == asked and locked.side == position.side else None)
        if booked is None:
            return
        held = "nothing" if ours <= 0 else f"{_plain(ours)} {locked.side}"
        execution = Execution.objects.create(
            account=account, kind=Execution.Kind.CLOSE, status=Execution.Status.FILLED, reason_code="closed_outside",
            started_at=now, finished_at=timezone.now(),
            reason=(f"Closed outside TradeFlow: {account.get_broker_display()} holds {held} of {locked.symbol} where "
                    f"TradeFlow had {_plain(locked.qty)} {locked.side}. {booked.sentence}"),
            intent={"format": "manual", "action": "exit", "symbol": locked.symbol, "position_id": locked.pk,
                    "trigger": "reconcile", "qty": str(booked.qty), "price": str(booked.price),
                    "price_from": "broker" if booked.from_broker else "last_known"},
        )
        transaction.on_commit(lambda: _publish(execution.pk))
    result.booked.append(booked)
    result.executions.append(execution.pk)
    log.info("reconcile: account %s %s", account.pk, execution.reason)


def _publish(execution_id: int) -> None:
    from brokers.live import publish_execution

    publish_execution(Execution.objects.select_related("account").get(pk=execution_id))


def _log_foreign(account: BrokerAccount, foreign: Foreign) -> None:
    """Warn once a day per account, symbol and quantity: a foreign position is there every minute until it goes."""
    key = f"tf:reconcile:foreign:{account.pk}:{foreign.symbol}:{foreign.qty}"
    level = logging.WARNING if cache.add(key, 1, timeout=86400) else logging.DEBUG
    log.log(level, "reconcile: account %s holds %s %s at %s that TradeFlow did not trade; not adopted",
            account.pk, _plain(foreign.qty), foreign.symbol, account.get_broker_display())


def _plain(value: Decimal) -> str:
    return format(Decimal(value).normalize(), "f")
