"""Pure arithmetic of trading: netting fills into positions, SL/TP prices, lot and step rounding.

No database, no clock: these are the functions the property tests hammer.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

ZERO = Decimal("0")


@dataclass(frozen=True)
class Net:
    """A position after a fill. ``qty`` is signed (+ long, - short)."""

    qty: Decimal
    avg_price: Decimal
    realized: Decimal
    reversed: bool = False


def net_fill(*, qty: Decimal, avg_price: Decimal, fill_qty: Decimal, fill_price: Decimal) -> Net:
    """Apply a signed fill to a signed position (average-price accounting).

    Adding to a position moves the average; reducing realizes P&L at the old average; crossing zero
    closes the old position and opens the remainder at the fill price.
    """
    if fill_qty == ZERO:
        return Net(qty, avg_price, ZERO)
    if qty == ZERO or (qty > 0) == (fill_qty > 0):
        new_qty = qty + fill_qty
        avg = (abs(qty) * avg_price + abs(fill_qty) * fill_price) / abs(new_qty)
        return Net(new_qty, avg, ZERO)
    closing = min(abs(qty), abs(fill_qty))
    direction = 1 if qty > 0 else -1
    realized = closing * (fill_price - avg_price) * direction
    new_qty = qty + fill_qty
    if new_qty == ZERO:
        return Net(ZERO, ZERO, realized)
    if (new_qty > 0) == (qty > 0):
        return Net(new_qty, avg_price, realized)
    return Net(new_qty, fill_price, realized, reversed=True)


def sl_tp_prices(
    *, side: str, entry: Decimal, sl: dict | None, tp: dict | None
) -> tuple[Decimal | None, Decimal | None]:
    """Stop-loss and take-profit prices for an entry (seed 003 modes: price, pct, points, rr).

    ``side`` is the entry side: for a buy the stop is below and the target above; for a sell, mirrored.
    ``rr`` sets the target at ``value`` times the stop distance.
    """
    sign = Decimal(1) if side == "buy" else Decimal(-1)

    def level(spec: dict, away: Decimal) -> Decimal:
        value = Decimal(spec["value"])
        if spec["mode"] == "price":
            return value
        if spec["mode"] == "pct":
            return entry * (1 + away * value / 100)
        if spec["mode"] == "points":
            return entry + away * value
        raise ValueError(f"unknown mode {spec['mode']}")

    sl_price = level(sl, -sign) if sl else None
    tp_price = None
    if tp:
        if tp["mode"] == "rr":
            if sl_price is None:
                raise ValueError("rr take-profit needs a stop loss")
            tp_price = entry + sign * abs(entry - sl_price) * Decimal(tp["value"])
        else:
            tp_price = level(tp, sign)
    return sl_price, tp_price


def slippage(*, side: str, reference: Decimal, fill: Decimal) -> tuple[Decimal, Decimal]:
    """Fill against the signal's price, signed so that positive is worse for the trader (paid more on a buy,
    received less on a sell): (price difference, basis points of the reference)."""
    diff = (fill - reference) * (1 if side == "buy" else -1)
    bps = (diff / reference * 10000).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return diff.quantize(Decimal("0.00000001"), rounding=ROUND_HALF_UP), bps


def round_to_step(value: Decimal, step: Decimal) -> Decimal:
    """Round down to a multiple of ``step`` (exchange LOT_SIZE / tick rules never round up)."""
    if step <= 0:
        return value
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


def round_to_tick(value: Decimal, tick: Decimal) -> Decimal:
    if tick <= 0:
        return value
    return (value / tick).to_integral_value(rounding=ROUND_HALF_UP) * tick


def hedge_lots(*, lots: int, hedge_pct: Decimal) -> int:
    """Hedge size in whole lots: ``hedge_pct`` of the main lots, rounded half up (10 lots × 30 % = 3)."""
    return int((Decimal(lots) * hedge_pct / 100).to_integral_value(rounding=ROUND_HALF_UP))
