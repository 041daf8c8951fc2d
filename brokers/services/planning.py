"""Turn an execution's intent into the ordered list of order legs to place.

Options format (seeds 000/001): entry = BUY the hedge (hedge % of the lots, further out of the money)
*then* SELL the main leg; exit = buy back the main leg first, then sell the hedge. Unified format: one
leg; ``close`` flattens the open position in the symbol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from brokers.calc import hedge_lots
from brokers.models import Execution, Instrument, Position
from webhooks.formats import paper_option_symbol


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


def _dec(value) -> Decimal | None:
    return None if value in (None, "") else Decimal(value)


def plan_legs(execution: Execution) -> list[LegPlan]:
    intent = execution.intent
    if intent.get("format") == "options":
        return _plan_options_entry(execution) if intent["action"] == "entry" else _plan_options_exit(execution)
    if intent["action"] == "exit":
        return [_close_leg(execution, intent["symbol"], "close")]
    limit = intent["order_type"] == "limit"
    return [
        LegPlan(leg="main", symbol=intent["symbol"], side=intent["side"], qty=Decimal(intent["qty"]),
                order_type=intent["order_type"], price=_dec(intent["price"]) if limit else None,
                # A limit order's price is its limit, not the market: the broker decides if it fills.
                reference_price=None if limit else _dec(intent.get("price")),
                sl_tp=(intent.get("sl"), intent.get("tp")))
    ]


def _open_position(execution: Execution, symbol: str) -> Position | None:
    return Position.objects.filter(account=execution.account, symbol=symbol, status=Position.Status.OPEN).first()


def _close_leg(execution: Execution, symbol: str, leg: str, *, required: bool = True) -> LegPlan | None:
    position = _open_position(execution, symbol)
    if position is None:
        if not required:
            return None
        raise PlanRejected("no_position", f"No open position in {symbol} on {execution.account.label} to close")
    side = "sell" if position.side == Position.Side.LONG else "buy"
    extra = {"option": position.meta} if position.meta.get("strike") else {}
    return LegPlan(leg=leg, symbol=symbol, side=side, qty=position.qty, reduce_only=True, extra=extra,
                   meta=position.meta)


def _lot_size(underlying: str, strike: Decimal, option_type: str) -> Decimal:
    instrument = (
        Instrument.objects.filter(name=underlying, strike=strike, instrument_type=option_type)
        .order_by("expiry").values_list("lot_size", flat=True).first()
    )
    return instrument or Decimal(settings.PAPER_OPTION_LOT_SIZE)


def _plan_options_entry(execution: Execution) -> list[LegPlan]:
    intent = execution.intent
    option = intent["option"]
    prefs = execution.account.owner.trading_settings
    lots = intent.get("lots") or prefs.default_lots
    underlying, option_type = option["underlying"], option["option_type"]
    strike = Decimal(option["strike"])
    lot_size = _lot_size(underlying, strike, option_type)
    main_symbol = intent["symbol"]
    legs: list[LegPlan] = []
    n_hedge = hedge_lots(lots=lots, hedge_pct=prefs.hedge_pct)
    hedge_symbol = ""
    if n_hedge > 0:
        # Further out of the money: below the strike for puts, above it for calls.
        offset = Decimal(prefs.hedge_strike_offset) * (-1 if option_type == "PE" else 1)
        hedge_strike = strike + offset
        hedge_symbol = paper_option_symbol(underlying, hedge_strike, option_type)
        hedge_lot_size = _lot_size(underlying, hedge_strike, option_type)
        hedge_option = {**option, "strike": str(hedge_strike)}
        legs.append(LegPlan(
            leg="hedge", symbol=hedge_symbol, side="buy", qty=n_hedge * hedge_lot_size, extra={"option": hedge_option},
            meta={**hedge_option, "role": "hedge", "lots": n_hedge, "lot_size": str(hedge_lot_size),
                  "main_symbol": main_symbol},
        ))
    legs.append(LegPlan(
        leg="main", symbol=main_symbol, side="sell", qty=lots * lot_size, extra={"option": option},
        meta={**option, "role": "main", "lots": lots, "lot_size": str(lot_size), "hedge_symbol": hedge_symbol,
              "signal": intent.get("signal"),
              # Seeds 000/001: the stop is the strike itself, watched against the underlying's spot price.
              "spot_stop": str(strike)},
    ))
    return legs


def _plan_options_exit(execution: Execution) -> list[LegPlan]:
    symbol = execution.intent["symbol"]
    main = _close_leg(execution, symbol, "exit_main")
    legs = [main]
    hedge_symbol = main.meta.get("hedge_symbol")
    if hedge_symbol:
        hedge = _close_leg(execution, hedge_symbol, "exit_hedge", required=False)
        if hedge:
            legs.append(hedge)
    return legs
