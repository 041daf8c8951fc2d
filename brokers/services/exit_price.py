"""The real exit price of a position closed in the broker's own app, when the broker's trade book tells it.

Reconcile (``brokers.services.reconcile``) finds a live position the broker holds less of than TradeFlow: the
trader closed it in the Kite or Binance app. Booking it at the last price TradeFlow knows makes the realized P&L
wrong by the difference to the real exit, so ``exit_price`` asks the broker (``adapter.fills``) and returns the
price at which the quantity gone was taken off, or None, and the booking falls back to the last known price. It
answers only when the answer is unambiguous; every doubt is None.

Zerodha Kite (``KiteAdapter.fills``: the ``day`` rows of ``kite.positions()``, i.e. today's buys and sells per
contract, each side as one total at its average price; no order ids, no times):

* The closing side is "sell" for a long, "buy" for a short. Its day total must be exactly the quantity gone.
  More (the app also closed or flipped something else today, or a part gone earlier today was already booked) or
  less (the rest went some other way: expiry, settlement, an earlier day) is ambiguous.
* TradeFlow itself must not have traded the closing side of that contract today (its own filled Order rows,
  created or filled since midnight IST, on that account and symbol): Kite's average would mix its fills with the
  app's. TradeFlow's own trades on the *opening* side today (the entry) do not enter the closing side's
  average; they are allowed. (Stricter reading of "TradeFlow did not trade it today" would never give the real
  price for the commonest case, an intraday entry closed in the app the same day.)
* The app must not have traded the opening side today: the day's opening-side total minus TradeFlow's own
  opening fills today must be zero, else the app's sells may have closed the app's own buys as well.
* A position opened on an earlier day (the ``net`` row carries ``overnight_quantity``; its ``buy_*``/``sell_*``
  may include what was carried forward): only the ``day`` rows are read, which hold today's trades alone, so
  the overnight part does not disturb the average. Closed on an earlier day and not reconciled since (the
  account was switched off, logged out, …): today's rows do not show it; the totals do not match; fallback.
* Partial close: the day's closing total equals the part gone (the rest is still held), so the part is booked
  at the real price. A second partial close later the same day: the day's closing total is now both parts and no
  longer equals what is gone this time; fallback for the second part (the first was booked at its real price).
* Rows of every product (NRML, MIS) are added up, as reconcile compares positions.

Binance USDⓈ-M futures (``BinanceAdapter.fills``: ``GET /fapi/v1/userTrades``, one row per fill with the
broker's order id and an increasing trade id; the rows carry no client order id):

* TradeFlow's fills are recognised by order id: the ``broker_order_id`` of its own Order rows on that account and
  symbol (which is what TradeFlow booked). Its last fill anchors the window: the list is read from 5 minutes
  before that fill was recorded, and only fills after TradeFlow's last one (by trade id) count. If a filled
  Order row of TradeFlow's has no broker order id, or TradeFlow's last fill is not in the list, we cannot tell
  its fills from the app's: fallback. A fill of TradeFlow's own broker-side stop (placed as an algo order, its
  triggered order has another id) counts as the app's: it is not in TradeFlow's books either, and its price is
  the real exit.
* After the anchor, the app's fills must all be on the closing side (an opening-side fill means the app traded
  both ways), and they must add up to at least the quantity gone. The price is the quantity-weighted average of
  the newest of them that cover the quantity gone: fills older than those closed what an earlier reconcile
  round already booked (a partial close, then another), or, on a flip, the newest sale both closed TradeFlow's
  part and opened the app's.
* A full list (1,000 fills) may miss the newest ones, and the list covers 7 days from the anchor: both fall
  back.

Any broker error while asking (a rate limit, a blip) also falls back: reconcile is not held up by the price.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db.models import Q

from brokers.adapters.base import BrokerAdapter, BrokerError
from brokers.models import Broker, BrokerAccount, Order, Position

log = logging.getLogger(__name__)
ZERO = Decimal("0")
IST = ZoneInfo("Asia/Kolkata")
BINANCE_WINDOW = timedelta(days=7) - timedelta(minutes=1)  # what /fapi/v1/userTrades answers from a startTime
BINANCE_LOOKBACK = timedelta(minutes=5)  # TradeFlow records a fill after Binance made it: read from a bit before
PLACES = Decimal("0.00000001")  # the books' 8 decimal places


def exit_price(account: BrokerAccount, adapter: BrokerAdapter, position: Position, gone: Decimal, *,
               now: datetime) -> Decimal | None:
    """The average price at which the broker's trade book shows ``gone`` of ``position`` taken off outside
    TradeFlow, or None when the broker cannot tell it unambiguously (see the module's rules)."""
    if gone <= 0:
        return None
    closing = "sell" if position.side == Position.Side.LONG else "buy"
    try:
        if account.broker == Broker.KITE:
            price = _kite(account, adapter, position, gone, closing, now=now)
        elif account.broker == Broker.BINANCE:
            price = _binance(account, adapter, position, gone, closing, now=now)
        else:
            return None
    except BrokerError as exc:
        log.info("reconcile: no exit price for account %s %s: %s", account.pk, position.symbol, exc.message)
        return None
    return price.quantize(PLACES) if price else None


def _ours(account: BrokerAccount, symbol: str):
    return Order.objects.filter(account=account, symbol=symbol, filled_qty__gt=0)


def _kite(account, adapter, position, gone, closing, *, now) -> Decimal | None:
    midnight = datetime.combine(now.astimezone(IST).date(), time.min, tzinfo=IST)
    ours = {Order.Side.BUY: ZERO, Order.Side.SELL: ZERO}
    for side, qty in (_ours(account, position.symbol).filter(Q(created_at__gte=midnight) | Q(filled_at__gte=midnight))
                      .values_list("side", "filled_qty")):
        ours[side] += qty
    if ours[closing]:
        return None  # TradeFlow's own fills are in the closing side's day average
    fills = adapter.fills(position.symbol)
    if fills is None:
        return None
    day = {fill.side: fill for fill in fills}
    opening = "buy" if closing == "sell" else "sell"
    app_opening = (day[opening].qty if opening in day else ZERO) - ours[opening]
    if closing not in day or day[closing].qty != gone or app_opening != 0:
        return None
    return day[closing].price


def _binance(account, adapter, position, gone, closing, *, now) -> Decimal | None:
    ours = list(_ours(account, position.symbol).values("broker_order_id", "created_at", "filled_at"))
    if not ours or any(not row["broker_order_id"] for row in ours):
        return None
    last = max((row["filled_at"] or row["created_at"]) for row in ours)
    since = last - BINANCE_LOOKBACK
    if now - since >= BINANCE_WINDOW:
        # The list answers 7 days from ``since``: it would end before now, and an older outside fill (one an earlier
        # round already booked) would pass for this close's.
        return None
    fills = adapter.fills(position.symbol, since=since)
    if not fills:
        return None
    our_ids = {row["broker_order_id"] for row in ours}
    anchor = max((fill.trade_id for fill in fills if fill.order_id in our_ids), default=None)
    if anchor is None:
        return None
    after = [fill for fill in fills if fill.trade_id > anchor and fill.order_id not in our_ids]
    if any(fill.side != closing for fill in after):
        return None
    need, value = gone, ZERO
    for fill in sorted(after, key=lambda f: f.trade_id, reverse=True):
        take = min(fill.qty, need)
        value += take * fill.price
        need -= take
        if not need:
            return value / gone
    return None
