"""Turn an execution's intent into the ordered list of order legs to place: ``plan_legs`` is the one entry point.

Options format (seeds 000/001, ``options.py``): entry = BUY the hedge (hedge % of the lots, further out of the
money) *then* SELL the main leg; exit = buy back the main leg first, then sell the hedge. On Kite the contracts
are looked up in the instruments list. Unified format: one leg; ``close`` flattens the open position in the
symbol. Bot signals (``bot.py``): sized per subscriber from the effective config the fan-out put in the intent.
On Binance (``binance.py``) quantities and prices are made to obey the symbol's exchange filters first.
"""

from __future__ import annotations

from decimal import Decimal

from brokers.models import Broker, Execution
from brokers.services.planning import options
from brokers.services.planning.base import LegPlan, PlanRejected, close_leg, dec, open_position

__all__ = ["LegPlan", "PlanRejected", "plan_legs"]


def plan_legs(execution: Execution, *, adapter=None) -> list[LegPlan]:
    """The legs to place, in order. ``adapter`` answers the questions a plan may need the broker for (Binance
    exchange filters, a last price); without one the account's own adapter is used."""
    intent, account = execution.intent, execution.account
    if intent.get("format") == "options":
        return options.plan_options(execution)
    if intent.get("format") == "bot":
        from brokers.services.planning.bot import plan_bot

        if adapter is None:
            from brokers.adapters import get_adapter

            adapter = get_adapter(account)
        return plan_bot(execution, adapter=adapter)
    if account.broker == Broker.BINANCE and not account.is_paper:
        # Imported here: binance_rules imports PlanRejected from this package.
        from brokers.services.planning.binance import plan_binance

        if adapter is None:
            from brokers.adapters import get_adapter

            adapter = get_adapter(account)
        return plan_binance(execution, adapter=adapter)
    if intent["action"] == "exit":
        symbol = intent["symbol"]
        position = open_position(execution, symbol)
        return [close_leg(execution, position, symbol, "close",
                          extra=options.close_extra(position) if position else None)]
    limit = intent["order_type"] == "limit"
    return [
        LegPlan(leg="main", symbol=intent["symbol"], side=intent["side"], qty=Decimal(intent["qty"]),
                order_type=intent["order_type"], price=dec(intent["price"]) if limit else None,
                # A limit order's price is its limit, not the market: the broker decides if it fills.
                reference_price=None if limit else dec(intent.get("price")),
                sl_tp=(intent.get("sl"), intent.get("tp")))
    ]
