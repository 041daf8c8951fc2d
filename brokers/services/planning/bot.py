"""Bot signals (seed 004) for one subscriber: size from the subscriber's effective config, close the bot's positions.

The fan-out baked the effective config into the intent (``sizing``: margin, leverage, lots; ``sl``/``tp`` as %).
Entries: quantity = margin × leverage ÷ price — on live Binance through ``binance_quantity`` (the symbol's step,
minimum quantity and notional), on paper rounded down to 8 decimals; options bots sell the strike with its hedge
(``options.py``) for the subscriber's lots. Every leg carries ``meta["bot"]``, so the position remembers which bot
opened it: ``close`` closes this bot's position in the symbol, ``close_all`` every position this bot has open on
the account (short legs first, so an options hedge is never sold before its main leg).
"""

from __future__ import annotations

from dataclasses import replace
from decimal import ROUND_DOWN, Decimal

from brokers.models import Broker, Execution, Position
from brokers.services.planning import options
from brokers.services.planning.base import LegPlan, PlanRejected, close_leg, dec

PAPER_QTY = Decimal("0.00000001")  # what the quantity column holds


def plan_bot(execution: Execution, *, adapter) -> list[LegPlan]:
    intent = execution.intent
    bot_id = intent["bot"]["id"]
    if intent["action"] == "close_all":
        return _close_all(execution, adapter, bot_id)
    if intent.get("option"):
        return [replace(leg, meta={**leg.meta, "bot": bot_id}) for leg in options.plan_options(execution)]
    if intent["action"] == "exit":
        position = _bot_positions(execution, bot_id).filter(symbol=intent["symbol"]).first()
        if position is None:
            raise PlanRejected("no_position", f"No open {intent['symbol']} position from this bot on "
                               f"{execution.account.label} to close")
        return [_close(execution, adapter, position, "close")]
    return [_entry(execution, adapter, bot_id)]


def _live_binance(execution: Execution) -> bool:
    return execution.account.broker == Broker.BINANCE and not execution.account.is_paper


def _entry(execution: Execution, adapter, bot_id: int) -> LegPlan:
    intent = execution.intent
    sizing, symbol, market = intent["sizing"], intent["symbol"], intent.get("market") or "spot"
    margin, leverage = Decimal(sizing["margin"]), int(sizing["leverage"]) if market == "futures" else 1
    signal_price = dec(intent.get("price"))
    common = {"leg": "main", "symbol": symbol, "side": intent["side"], "reference_price": signal_price,
              "sl_tp": (intent.get("sl"), intent.get("tp")), "meta": {"bot": bot_id}}
    if _live_binance(execution):
        from brokers.services.binance_rules import binance_quantity, symbol_filters_get

        filters = symbol_filters_get(adapter=adapter, symbol=symbol, market=market)
        price = signal_price or adapter.last_prices([symbol], market=market).get(symbol)
        qty = binance_quantity(symbol_filters=filters, price=price, margin=margin, leverage=leverage)
        extra: dict = {"market": market}
        if market == "futures":
            account_options = execution.account.options or {}
            extra |= {"leverage": leverage,
                      **{k: account_options[k] for k in ("margin_type", "protection") if account_options.get(k)}}
        return LegPlan(qty=qty, extra=extra, tick_size=filters.tick_size, **common)
    price = signal_price or adapter.last_prices([symbol]).get(symbol)
    if not price:
        raise PlanRejected("no_price", f"Sizing {symbol} needs a price: send it in the alert "
                           "(e.g. \"price\": {{close}})")
    qty = (margin * leverage / Decimal(price)).quantize(PAPER_QTY, rounding=ROUND_DOWN)
    if qty <= 0:
        raise PlanRejected("below_min_qty", f"A margin of {margin} × {leverage} at {price} buys nothing of {symbol}: "
                           "increase the margin")
    return LegPlan(qty=qty, **common)


def _bot_positions(execution: Execution, bot_id: int):
    return Position.objects.filter(account=execution.account, status=Position.Status.OPEN, meta__bot=bot_id)


def _close(execution: Execution, adapter, position: Position, leg: str) -> LegPlan:
    if not _live_binance(execution):
        return close_leg(execution, position, position.symbol, leg, extra=options.close_extra(position))
    from brokers.services.binance_rules import binance_quantity, symbol_filters_get

    market = execution.intent.get("market") or "spot"
    plan = close_leg(execution, position, position.symbol, leg, extra={"market": market})
    filters = symbol_filters_get(adapter=adapter, symbol=position.symbol, market=market)
    qty = binance_quantity(symbol_filters=filters, qty=plan.qty, price=position.last_price or position.avg_price,
                           order_type="market", reduce_only=True)
    return replace(plan, qty=qty)


def _close_all(execution: Execution, adapter, bot_id: int) -> list[LegPlan]:
    positions = sorted(_bot_positions(execution, bot_id), key=lambda p: (p.side == Position.Side.LONG, p.pk))
    if not positions:
        raise PlanRejected("no_position", f"No open positions from this bot on {execution.account.label} to close")
    return [_close(execution, adapter, p, f"close_{n}") for n, p in enumerate(positions, start=1)]
