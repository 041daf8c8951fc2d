"""Positions the broker no longer holds when TradeFlow comes to close them.

A trader may close a position in the broker's own app (Kite web, the Binance app). The adapters never send a close
for more than the broker holds (Kite has no reduce-only flag: the rest would open a new position), and say so:
``not_held`` when nothing is left, ``raw["not_held_qty"]`` for the part that was gone. What was gone is booked here
as closed outside TradeFlow at the last price we know, which may differ from the real exit: the reason says so.
The periodic reconcile (``brokers.services.reconcile``) books what it finds gone the same way, except that it first
asks the broker's trade book for the real exit price (``brokers.services.exit_price``) and, when it is known,
books at that price and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from brokers.adapters.base import BrokerAdapter
from brokers.models import BrokerAccount, Execution, Position
from brokers.services.exit_price import exit_price
from brokers.services.planning import LegPlan
from brokers.services.positions import position_apply_fill


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


@dataclass(frozen=True)
class ClosedOutside:
    """What was booked: ``qty`` of ``symbol`` closed at ``price``, realizing ``realized``."""

    position_id: int
    symbol: str
    qty: Decimal
    price: Decimal
    realized: Decimal
    from_broker: bool = False  # ``price`` is the broker's exit price (its trade book), not the last known price

    @property
    def sentence(self) -> str:
        if self.from_broker:
            return (f"{_plain(self.qty)} {self.symbol} booked closed at the broker's exit price {_plain(self.price)} "
                    "(from its trade book)")
        return (f"{_plain(self.qty)} {self.symbol} booked closed at the last known price {_plain(self.price)}: "
                "check the real exit price in your broker's trade book")


def position_book_closed_outside(*, account: BrokerAccount, symbol: str, qty: Decimal,
                                 price: Decimal | None = None) -> ClosedOutside | None:
    """Close up to ``qty`` of the account's open ``symbol`` position in our books at ``price``, the broker's exit
    price when the caller learnt it from the broker's trade book, else at the last known price. None when there is
    no open position or nothing to close."""
    with transaction.atomic():
        position = (Position.objects.select_for_update()
                    .filter(account=account, symbol=symbol, status=Position.Status.OPEN).first())
        if position is None:
            return None
        qty = min(qty, position.qty)
        if qty <= 0:
            return None
        from_broker = price is not None
        if price is None:
            price = position.last_price or position.avg_price
        side = "sell" if position.side == Position.Side.LONG else "buy"  # the side that takes it off
        _, realized = position_apply_fill(account=account, symbol=symbol, side=side, qty=qty, price=price,
                                          meta=position.meta)
    return ClosedOutside(position_id=position.pk, symbol=symbol, qty=qty, price=price, realized=realized,
                         from_broker=from_broker)


def book_closed_outside(execution: Execution, leg: LegPlan, qty: Decimal, broker_said: str,
                        adapter: BrokerAdapter | None = None) -> str:
    """Close ``qty`` of the leg's open position in our books; returns the sentence the execution shows. With the
    adapter, at the broker's exit price when its trade book tells it unambiguously (``exit_price``: a position
    closed in the app before TradeFlow's own close; TradeFlow's fills on the closing side today make it ambiguous,
    so a partial close that TradeFlow sent the rest of falls back to the last known price)."""
    price = None
    if adapter is not None:
        position = Position.objects.filter(account=execution.account, symbol=leg.symbol,
                                           status=Position.Status.OPEN).first()
        if position is not None:
            price = exit_price(execution.account, adapter, position, min(qty, position.qty), now=timezone.now())
    booked = position_book_closed_outside(account=execution.account, symbol=leg.symbol, qty=qty, price=price)
    if booked is None:
        return broker_said
    return f"{broker_said}. {booked.sentence}"
