"""The built-in paper broker: a simulated exchange that fills market orders immediately.

Fill price, in order: the price the signal carried, the last known quote for the symbol, and for an
index option with neither, a Black-Scholes estimate from the spot price (flat 15 % volatility, to the
contract's expiry or a week out). Its order book (``PaperOrder``) is keyed by client order id, so
placing the same client id twice returns the first fill, like a real broker's duplicate check.
"""

from __future__ import annotations

import math
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from brokers.adapters.base import (
    Balance,
    BrokerAdapter,
    BrokerError,
    BrokerPosition,
    BrokerRejected,
    OrderRequest,
    OrderResult,
)
from brokers.models import Broker, PaperOrder, Position, Quote
from tradeflow.fastinsert import insert_objects, savepoint_if_nested

PAPER_VOLATILITY = 0.15
OPTION_TICK = Decimal("0.05")


def option_premium_estimate(*, spot: Decimal, strike: Decimal, option_type: str, expiry: date | None) -> Decimal:
    """Black-Scholes price (no rates, no dividends) rounded to the exchange tick; never below one tick."""
    days = max((expiry - timezone.localdate()).days, 1) if expiry else 7
    t = days / 365.0
    s, k, vol = float(spot), float(strike), PAPER_VOLATILITY
    d1 = (math.log(s / k) + 0.5 * vol * vol * t) / (vol * math.sqrt(t))
    d2 = d1 - vol * math.sqrt(t)
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    if option_type == "CE":
        value = s * cdf(d1) - k * cdf(d2)
    else:
        value = k * cdf(-d2) - s * cdf(-d1)
    ticks = (Decimal(str(value)) / OPTION_TICK).quantize(Decimal("1"), rounding=ROUND_HALF_UP)
    return max(ticks, Decimal("1")) * OPTION_TICK


def quote_set(*, broker: str, symbol: str, price: Decimal) -> None:
    # Once a symbol has a quote (the usual case) this is one UPDATE; bulk_create's upsert would add BEGIN and
    # COMMIT around its INSERT (two more round trips). The first quote of a symbol is one upsert statement
    # instead of update_or_create's SELECT … FOR UPDATE + UPDATE/INSERT, so two first fills at once are safe.
    now = timezone.now()
    if Quote.objects.filter(broker=broker, symbol=symbol).update(price=price, updated_at=now):
        return
    Quote.objects.bulk_create([Quote(broker=broker, symbol=symbol, price=price, updated_at=now)],
                              update_conflicts=True, unique_fields=["broker", "symbol"],
                              update_fields=["price", "updated_at"])


def quotes_set(*, broker: str, prices: dict[str, Decimal]) -> None:
    """``quote_set`` for many symbols in one upsert statement (a batch's fills)."""
    now = timezone.now()
    Quote.objects.bulk_create([Quote(broker=broker, symbol=symbol, price=price, updated_at=now)
                               for symbol, price in sorted(prices.items())],  # in key order: no upsert deadlocks
                              update_conflicts=True, unique_fields=["broker", "symbol"],
                              update_fields=["price", "updated_at"])


class PaperAdapter(BrokerAdapter):
    broker = Broker.PAPER

    @staticmethod
    def _price(request: OrderRequest, quote: Decimal | None) -> Decimal | None:
        """Where a market order fills: the alert's price, the last quote, an index option's estimate; else None."""
        if request.reference_price:
            return request.reference_price
        if quote:
            return quote
        option = request.extra.get("option")
        if option and option.get("spot"):
            return option_premium_estimate(
                spot=Decimal(option["spot"]), strike=Decimal(option["strike"]), option_type=option["option_type"],
                expiry=date.fromisoformat(option["expiry"]) if option.get("expiry") else None,
            )
        return None

    def _market_price(self, request: OrderRequest) -> Decimal:
        quote = None if request.reference_price else Quote.objects.filter(
            broker=self.broker, symbol=request.symbol).values_list("price", flat=True).first()
        price = self._price(request, quote)
        if price is None:
            raise BrokerRejected(
                f"No price known for {request.symbol}: send the price in the alert (e.g. \"price\": {{{{close}}}})",
                code="no_price",
            )
        return price

    def place_order(self, request: OrderRequest) -> OrderResult:
        # A client id seen before answers with its first fill: the unique key finds it (no SELECT up front; the
        # engine looks an order up before it ever places one again).
        market = self._market_price(request)
        price = market
        if request.order_type == "limit":
            marketable = market <= request.price if request.side == "buy" else market >= request.price
            if not marketable:
                raise BrokerRejected(
                    f"Paper broker fills only marketable limit orders: limit {request.price} vs last price {market}",
                    code="limit_not_marketable",
                )
            price = request.price
        elif request.order_type != "market":
            raise BrokerRejected(f"Paper broker does not take {request.order_type} orders", code="unsupported_type")
        try:
            with savepoint_if_nested():  # in autocommit the INSERT alone is atomic: no BEGIN/COMMIT round trips
                order = PaperOrder.objects.create(
                    account=self.account, client_order_id=request.client_order_id, symbol=request.symbol,
                    side=request.side, qty=request.qty, price=price,
                )
        except IntegrityError:  # the same client id placed before or concurrently: the first one wins
            order = PaperOrder.objects.get(account=self.account, client_order_id=request.client_order_id)
            return self._result(order)
        quote_set(broker=self.broker, symbol=request.symbol, price=price)
        return self._result(order)

    @classmethod
    def place_batch(cls, items: list[tuple[PaperAdapter, OrderRequest]]) -> list[OrderResult | BrokerError]:
        """``place_order`` for many first-time orders (a batch of executions): one INSERT for the market orders whose
        price is known, one quote update per symbol. Prices as one by one in list order: an order without a price
        fills at the last one before it in the batch. Anything else (a limit order, no price known), or a client id
        placed before, goes through ``place_order`` one by one, which answers exactly as it would alone."""
        quotes = dict(Quote.objects.filter(broker=cls.broker, symbol__in={
            r.symbol for _, r in items if not r.reference_price}).values_list("symbol", "price"))
        simple, rows = [], []
        for n, (adapter, request) in enumerate(items):
            price = cls._price(request, quotes.get(request.symbol)) if request.order_type == "market" else None
            if price is None:
                continue
            quotes[request.symbol] = price
            simple.append(n)
            rows.append(PaperOrder(account=adapter.account, client_order_id=request.client_order_id,
                                   symbol=request.symbol, side=request.side, qty=request.qty, price=price))
        results: list[OrderResult | BrokerError | None] = [None] * len(items)
        try:
            # No savepoint inside a caller's transaction (the batch engine's, whose executions were never attempted,
            # so no client id can be in the book): an error there fails that whole transaction, as it should.
            with transaction.atomic(savepoint=False):
                insert_objects([rows], savepoint=False)
                if rows:
                    quotes_set(broker=cls.broker, prices={row.symbol: row.price for row in rows})
        except IntegrityError:  # a client id already in the book: each finds its first fill on its own
            simple = []
        else:
            for n, row in zip(simple, rows, strict=True):
                results[n] = cls._result(row)
        for n, (adapter, request) in enumerate(items):
            if results[n] is None:
                try:
                    results[n] = adapter.place_order(request)
                except BrokerError as exc:
                    results[n] = exc
        return results

    @staticmethod
    def _result(order: PaperOrder) -> OrderResult:
        return OrderResult(broker_order_id=f"P{order.pk}", status="filled", filled_qty=order.qty,
                           avg_price=order.price)

    def cancel_order(self, *, client_order_id: str, broker_order_id: str = "", symbol: str = "") -> None:
        raise BrokerRejected("Paper orders fill immediately; there is nothing open to cancel", code="not_open")

    def order_status(self, *, client_order_id: str, symbol: str = "") -> OrderResult | None:
        order = PaperOrder.objects.filter(account=self.account, client_order_id=client_order_id).first()
        return self._result(order) if order else None

    def positions(self) -> list[BrokerPosition]:
        rows = Position.objects.filter(account=self.account, status=Position.Status.OPEN)
        return [
            BrokerPosition(symbol=p.symbol, qty=p.qty if p.side == Position.Side.LONG else -p.qty,
                           avg_price=p.avg_price, last_price=p.last_price)
            for p in rows
        ]

    def last_prices(self, symbols: list[str]) -> dict[str, Decimal]:
        return dict(Quote.objects.filter(broker=self.broker, symbol__in=symbols).values_list("symbol", "price"))

    def balance(self) -> Balance:
        unrealized = sum((p.unrealized_pnl for p in Position.objects.filter(
            account=self.account, status=Position.Status.OPEN)), Decimal("0"))
        # Fills move the balance with an UPDATE (F expression), so the account object here may be stale.
        self.account.refresh_from_db(fields=["balance"])
        cash = self.account.balance
        return Balance(currency=self.account.currency, cash=cash, equity=cash + unrealized)

    def validate_credentials(self) -> None:
        return None
