"""Options format (seeds 000/001): entry = BUY the hedge, then SELL the main leg; exit = main first, then hedge.

Live Kite accounts trade exact listed contracts: each strike (main *and* hedge) is looked up with
``option_resolve`` in the Kite instruments list — expiry rule from the account (``options["expiry_rule"]``,
nearest weekly by default), on today's date in India — and the lot size, exchange and freeze quantity come from
that same row. A tradingsymbol is never spelled and a lot size never remembered: NIFTY's went from 75 to 65 for
2026 expiries. Paper accounts keep readable symbols ("NIFTY 25000 PE") and take the lot size and expiry from the
same list when it holds the contract, else ``PAPER_OPTION_LOT_SIZE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from brokers.calc import hedge_lots
from brokers.models import Broker, BrokerAccount, Execution, Position
from brokers.services import instruments
from brokers.services.planning.base import LegPlan, PlanRejected, close_leg, dec, open_position
from webhooks.formats import paper_option_symbol

# Account options the Kite adapter also reads; carried on the leg so the plan shows what will be sent.
KITE_ORDER_OPTIONS = ("product", "variety", "market_protection")


@dataclass(frozen=True)
class Contract:
    symbol: str
    lot_size: Decimal
    extra: dict = field(default_factory=dict)  # for the order request
    meta: dict = field(default_factory=dict)  # kept on the position


def plan_options(execution: Execution) -> list[LegPlan]:
    account = execution.account
    if not account.is_paper and account.broker != Broker.KITE:
        raise PlanRejected("unsupported_format", "The options format trades NSE index options: send it to a Zerodha "
                           f"Kite or a paper account, not to {account.get_broker_display()}")
    return _entry(execution) if execution.intent["action"] == "entry" else _exit(execution)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _resolve(account: BrokerAccount, option: dict, strike: Decimal):
    return instruments.option_resolve(
        underlying=option["underlying"], strike=strike, option_type=option["option_type"],
        on_date=instruments.ist_today(), expiry_rule=(account.options or {}).get("expiry_rule", "nearest_weekly"),
    )


def kite_contract(account: BrokerAccount, option: dict, strike: Decimal, role: str) -> Contract:
    try:
        row = _resolve(account, option, strike)
    except instruments.InstrumentNotFound as exc:
        raise PlanRejected("instrument_not_found", f"{role.capitalize()} leg: {exc.message}") from exc
    except ValueError as exc:  # an expiry rule we do not know
        raise PlanRejected("bad_expiry_rule", f"{exc}; change it in the account's settings") from exc
    options = account.options or {}
    lot_size = Decimal(int(row.lot_size))
    extra = {"exchange": row.exchange, "lot_size": lot_size, "freeze_qty": row.freeze_qty,
             **{k: options[k] for k in KITE_ORDER_OPTIONS if k in options}}
    meta = {"exchange": row.exchange, "tradingsymbol": row.tradingsymbol, "expiry": row.expiry.isoformat(),
            "freeze_qty": _text(row.freeze_qty)}
    return Contract(symbol=f"{row.exchange}:{row.tradingsymbol}", lot_size=lot_size, extra=extra, meta=meta)


def paper_contract(account: BrokerAccount, option: dict, strike: Decimal) -> Contract:
    try:
        row = _resolve(account, option, strike)
        lot_size, expiry = Decimal(int(row.lot_size)), row.expiry.isoformat()
    except (instruments.InstrumentNotFound, ValueError):  # paper trades whatever is asked, at the default lot
        lot_size, expiry = Decimal(settings.PAPER_OPTION_LOT_SIZE), None
    symbol = paper_option_symbol(option["underlying"], strike, option["option_type"])
    priced = {**option, "expiry": expiry} if expiry else option  # the paper broker prices to the expiry
    return Contract(symbol=symbol, lot_size=lot_size, extra={"option": priced},
                    meta={"expiry": expiry} if expiry else {})


def _contract(account: BrokerAccount, option: dict, strike: Decimal, role: str) -> Contract:
    if account.is_paper:
        return paper_contract(account, option, strike)
    return kite_contract(account, option, strike, role)


def _entry(execution: Execution) -> list[LegPlan]:
    intent, account = execution.intent, execution.account
    option = intent["option"]
    prefs = account.owner.trading_settings
    lots = intent.get("lots") or prefs.default_lots
    strike = Decimal(option["strike"])
    main = _contract(account, option, strike, "main")
    legs: list[LegPlan] = []
    n_hedge = hedge_lots(lots=lots, hedge_pct=prefs.hedge_pct)
    hedge_symbol = ""
    if n_hedge > 0:
        # Further out of the money: below the strike for puts, above it for calls.
        offset = Decimal(prefs.hedge_strike_offset) * (-1 if option["option_type"] == "PE" else 1)
        hedge_strike = strike + offset
        hedge_option = {**option, "strike": str(hedge_strike)}
        hedge = _contract(account, hedge_option, hedge_strike, "hedge")
        hedge_symbol = hedge.symbol
        legs.append(LegPlan(
            leg="hedge", symbol=hedge.symbol, side="buy", qty=n_hedge * hedge.lot_size, extra=hedge.extra,
            meta={**hedge_option, **hedge.meta, "role": "hedge", "lots": n_hedge, "lot_size": _text(hedge.lot_size),
                  "main_symbol": main.symbol},
        ))
    legs.append(LegPlan(
        leg="main", symbol=main.symbol, side="sell", qty=lots * main.lot_size, extra=main.extra,
        meta={**option, **main.meta, "role": "main", "lots": lots, "lot_size": _text(main.lot_size),
              "hedge_symbol": hedge_symbol, "signal": intent.get("signal"),
              # Seeds 000/001: the stop is the strike itself, watched against the underlying's spot price.
              "spot_stop": str(strike)},
    ))
    return legs


def _open_main(execution: Execution) -> Position | None:
    """The open main leg this exit means: by its paper symbol, else (a Kite contract, whose symbol carries
    the expiry) by underlying, strike and type — the most recently opened, whatever week it was bought in."""
    intent = execution.intent
    position = open_position(execution, intent["symbol"])
    if position is not None:
        return position
    option = intent["option"]
    strike = Decimal(option["strike"])
    candidates = Position.objects.filter(
        account=execution.account, status=Position.Status.OPEN, meta__role="main",
        meta__underlying=option["underlying"], meta__option_type=option["option_type"],
    ).order_by("-opened_at")
    return next((p for p in candidates if dec(p.meta.get("strike")) == strike), None)


def close_extra(position: Position) -> dict:
    """What the broker needs to close this position: a Kite contract's exchange, lot and freeze quantity (so a
    big exit is split like its entry), or the option itself for the paper broker's price estimate."""
    meta = position.meta
    if meta.get("exchange") and meta.get("lot_size"):
        return {"exchange": meta["exchange"], "lot_size": Decimal(meta["lot_size"]),
                "freeze_qty": dec(meta.get("freeze_qty"))}
    return {"option": meta} if meta.get("strike") else {}


def _exit(execution: Execution) -> list[LegPlan]:
    main = _open_main(execution)
    legs = [close_leg(execution, main, execution.intent["symbol"], "exit_main",
                      extra=close_extra(main) if main else None)]
    hedge_symbol = main.meta.get("hedge_symbol")
    if hedge_symbol:
        hedge = open_position(execution, hedge_symbol)
        if hedge is not None:
            legs.append(close_leg(execution, hedge, hedge_symbol, "exit_hedge", extra=close_extra(hedge)))
    return legs
