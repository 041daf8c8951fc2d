"""What a plan is made of: the legs to place, and the rejection raised when a signal cannot become orders."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from brokers.models import Execution, Position


class PlanRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class LegPlan:
    leg: str
    symbol: str
    side: str
    qty: Decimal
    order_type: str = "market"
    price: Decimal | None = None
    reference_price: Decimal | None = None
    reduce_only: bool = False
    extra: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    sl_tp: tuple | None = None
    # The exchange's price tick: stop/target levels are rounded to it before they are sent and recorded.
    tick_size: Decimal | None = None


def dec(value) -> Decimal | None:
    return None if value in (None, "") else Decimal(value)


def open_position(execution: Execution, symbol: str) -> Position | None:
    return Position.objects.filter(account=execution.account, symbol=symbol, status=Position.Status.OPEN).first()


def close_leg(execution: Execution, position: Position | None, symbol: str, leg: str, *,
              extra: dict | None = None) -> LegPlan:
    """Flatten ``position`` at market; no position is a rejection naming the symbol."""
    if position is None:
        raise PlanRejected("no_position", f"No open position in {symbol} on {execution.account.label} to close")
    side = "sell" if position.side == Position.Side.LONG else "buy"
    return LegPlan(leg=leg, symbol=position.symbol, side=side, qty=position.qty, reduce_only=True,
                   extra=extra if extra is not None else {}, meta=position.meta)
