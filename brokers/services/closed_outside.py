"""Positions the broker no longer holds when TradeFlow comes to close them.

A trader may close a position in the broker's own app (Kite web, the Binance app). The adapters never send a close
for more than the broker holds (Kite has no reduce-only flag: the rest would open a new position), and say so:
``not_held`` when nothing is left, ``raw["not_held_qty"]`` for the part that was gone. What was gone is booked here
as closed outside TradeFlow at the last price we know, which may differ from the real exit: the reason says so.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction

from brokers.models import Execution, Position
from brokers.services.planning import LegPlan
from brokers.services.positions import position_apply_fill


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def book_closed_outside(execution: Execution, leg: LegPlan, qty: Decimal, broker_said: str) -> str:
    """Close ``qty`` of the leg's open position in our books; returns the sentence the execution shows."""
    with transaction.atomic():
        position = (Position.objects.select_for_update()
                    .filter(account=execution.account, symbol=leg.symbol, status=Position.Status.OPEN).first())
        if position is None:
            return broker_said
        qty = min(qty, position.qty)
        price = position.last_price or position.avg_price
        position_apply_fill(account=execution.account, symbol=leg.symbol, side=leg.side, qty=qty, price=price,
                            meta=leg.meta)
    return (f"{broker_said}. {_plain(qty)} {leg.symbol} booked closed at the last known price {_plain(price)}: "
            "check the real exit price in your broker's trade book")
