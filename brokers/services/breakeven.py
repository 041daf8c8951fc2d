"""Breakeven of a short option leg net of its hedge (seeds 000/001: "Position Breakeven Tracker").

The options flow sells the main leg (collects its premium) and buys a further-out-of-the-money hedge (pays its
premium). At expiry the pair makes money as long as the underlying stays on the right side of

    PE: strike − net credit per unit        CE: strike + net credit per unit
    net credit per unit = main price − hedge price × hedge qty ÷ main qty

The hedge usually has fewer lots than the main leg (hedge % of the lots), so its premium is spread over the main
leg's units. The breakeven ignores the hedge's own payoff beyond its strike (it only matters past the hedge
strike, where the hedge caps the loss) and charges nothing for brokerage.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction

from brokers.models import BrokerAccount, Position

ZERO = Decimal("0")


def option_net_credit(*, main_price: Decimal, main_qty: Decimal, hedge_price: Decimal | None = None,
                      hedge_qty: Decimal = ZERO) -> Decimal:
    """Premium kept per unit of the main leg once the hedge is paid for."""
    if main_qty <= 0:
        raise ValueError("the main leg has no quantity")
    paid = (hedge_price or ZERO) * hedge_qty / main_qty
    return main_price - paid


def option_breakeven(*, option_type: str, strike: Decimal, main_price: Decimal, main_qty: Decimal,
                     hedge_price: Decimal | None = None, hedge_qty: Decimal = ZERO) -> Decimal:
    """The underlying's price at which the short main leg plus its hedge break even at expiry.

    A short put loses below its strike, so its breakeven is the strike minus the net credit; a short call loses
    above it, so its breakeven is the strike plus the net credit. Example: 10 lots of NIFTY 25000 PE sold at
    120, 3 lots of the 24800 PE bought at 45 (lot 65): net credit = 120 − 45 × 195 ÷ 650 = 106.5, breakeven
    25000 − 106.5 = 24893.5.
    """
    credit = option_net_credit(main_price=main_price, main_qty=main_qty, hedge_price=hedge_price,
                               hedge_qty=hedge_qty)
    if option_type == "PE":
        return strike - credit
    if option_type == "CE":
        return strike + credit
    raise ValueError(f"option type must be CE or PE, not {option_type!r}")


def _plain(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.0001")).normalize(), "f")


@transaction.atomic(savepoint=False)  # called inside the fill's transaction: no savepoint round trips
def position_breakeven_record(*, account: BrokerAccount, symbol: str) -> Decimal | None:
    """Store the breakeven of the open main leg ``symbol`` in ``Position.meta["breakeven"]``.

    Computed from the open positions' average prices and quantities, so a second entry into the same contracts
    updates it for the combined position; for a single entry those are the fill prices. The hedge counts only
    while it is open. Returns the breakeven, or None when ``symbol`` is not an open short main leg.
    """
    main = Position.objects.select_for_update().filter(account=account, symbol=symbol,
                                                        status=Position.Status.OPEN).first()
    meta = main.meta if main else {}
    if main is None or meta.get("role") != "main" or main.side != Position.Side.SHORT or not meta.get("strike"):
        return None
    hedge = None
    if meta.get("hedge_symbol"):
        hedge = Position.objects.filter(account=account, symbol=meta["hedge_symbol"], status=Position.Status.OPEN,
                                        side=Position.Side.LONG).first()
    credit = option_net_credit(main_price=main.avg_price, main_qty=main.qty,
                               hedge_price=hedge.avg_price if hedge else None, hedge_qty=hedge.qty if hedge else ZERO)
    breakeven = option_breakeven(option_type=meta.get("option_type", ""), strike=Decimal(meta["strike"]),
                                 main_price=main.avg_price, main_qty=main.qty,
                                 hedge_price=hedge.avg_price if hedge else None,
                                 hedge_qty=hedge.qty if hedge else ZERO)
    main.meta = {**meta, "breakeven": _plain(breakeven), "net_credit": _plain(credit)}
    main.save(update_fields=["meta", "updated_at"])
    return breakeven
