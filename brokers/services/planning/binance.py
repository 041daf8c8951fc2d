"""unify.v1 on a live Binance account: legs that obey the symbol's exchange filters before anything is sent.

The market is the account's (``options["market"]``: "spot" or "futures"). Quantities are rounded down to the
step and checked against the minimum quantity and notional (``binance_rules``): an order Binance would refuse
with -1013 / -4164 is rejected here, with the numbers, and never sent. Limit prices are rounded to the tick.
Futures entries carry the account's leverage, margin type and protection mode for the adapter.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from brokers.models import Execution
from brokers.services.binance_rules import binance_price, binance_quantity, symbol_filters_get
from brokers.services.planning.base import LegPlan, PlanRejected, close_leg, dec, open_position

FUTURES_OPTIONS = ("leverage", "margin_type", "protection")


def binance_market(account) -> str:
    market = str((account.options or {}).get("market") or "spot").lower()
    if market not in ("spot", "futures"):
        raise PlanRejected("bad_market", f"Unknown Binance market {market!r} in the account's settings: use "
                           "\"spot\" or \"futures\"")
    return market


def plan_binance(execution: Execution, *, adapter) -> list[LegPlan]:
    intent, account = execution.intent, execution.account
    market = binance_market(account)
    symbol = intent["symbol"]
    if intent["action"] == "exit":
        position = open_position(execution, symbol)
        leg = close_leg(execution, position, symbol, "close", extra={"market": market})
        filters = symbol_filters_get(adapter=adapter, symbol=symbol, market=market)
        # Reduce-only futures closes are exempt from the notional minimum; a spot sale is not, and is checked
        # at the last price we know, so dust Binance would refuse is refused here with the numbers.
        qty = binance_quantity(symbol_filters=filters, qty=leg.qty, price=position.last_price or position.avg_price,
                               order_type="market", reduce_only=True)
        return [replace(leg, qty=qty)]
    filters = symbol_filters_get(adapter=adapter, symbol=symbol, market=market)
    order_type = intent["order_type"]
    limit = order_type == "limit"
    price = binance_price(symbol_filters=filters, price=intent["price"]) if limit else None
    reference = None if limit else dec(intent.get("price"))
    sizing_price = price or reference or adapter.last_prices([symbol]).get(symbol)
    qty = binance_quantity(symbol_filters=filters, qty=intent["qty"], price=sizing_price, order_type=order_type)
    extra: dict = {"market": market}
    if market == "futures":
        options = account.options or {}
        extra |= {k: options[k] for k in FUTURES_OPTIONS if options.get(k) not in (None, "")}
    return [LegPlan(leg="main", symbol=symbol, side=intent["side"], qty=Decimal(qty), order_type=order_type,
                    price=price, reference_price=reference, extra=extra, sl_tp=(intent.get("sl"), intent.get("tp")),
                    tick_size=filters.tick_size)]
