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
from django.utils import timezone

from brokers.models import BrokerAccount, Position
from tradeflow.fastinsert import update_many
from tradeflow.precompiled import Precompiled

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
    return positions_breakeven_record([(account, symbol)]).get((account.pk, symbol))


# The open positions of some (account, symbol) pairs, main legs locked: compiled once per process.
_open_positions = {
    locked: Precompiled(lambda account_ids, symbols, locked=locked: (
        Position.objects.select_for_update() if locked else Position.objects).filter(
        status=Position.Status.OPEN, account_id__any=account_ids, symbol__any=symbols), model=Position, arity=2,
        lists=(0, 1))
    for locked in (True, False)
}


@transaction.atomic(savepoint=False)
def positions_breakeven_record(pairs: list[tuple[BrokerAccount, str]]) -> dict[tuple[int, str], Decimal]:
    """``position_breakeven_record`` for many filled main legs (a batch of options entries): the main legs locked
    in one query, their hedges read in one, and the breakevens written in one statement. Returns (account id,
    symbol) → breakeven for the pairs that are open short main legs."""
    wanted = {(account.pk, symbol) for account, symbol in pairs}
    if not wanted:
        return {}
    mains = [p for p in _open_positions[True](sorted({a for a, _ in wanted}), sorted({s for _, s in wanted}))
             if (p.account_id, p.symbol) in wanted and p.meta.get("role") == "main" and p.side == Position.Side.SHORT
             and p.meta.get("strike")]
    hedged = {(p.account_id, p.meta["hedge_symbol"]) for p in mains if p.meta.get("hedge_symbol")}
    hedges = {}
    if hedged:
        hedges = {(h.account_id, h.symbol): h for h in _open_positions[False](
            sorted({a for a, _ in hedged}), sorted({s for _, s in hedged})) if h.side == Position.Side.LONG
            and (h.account_id, h.symbol) in hedged}
    out = {}
    for main in mains:
        meta = main.meta
        hedge = hedges.get((main.account_id, meta.get("hedge_symbol")))
        credit = option_net_credit(main_price=main.avg_price, main_qty=main.qty,
                                   hedge_price=hedge.avg_price if hedge else None,
                                   hedge_qty=hedge.qty if hedge else ZERO)
        breakeven = option_breakeven(option_type=meta.get("option_type", ""), strike=Decimal(meta["strike"]),
                                     main_price=main.avg_price, main_qty=main.qty,
                                     hedge_price=hedge.avg_price if hedge else None,
                                     hedge_qty=hedge.qty if hedge else ZERO)
        main.meta = {**meta, "breakeven": _plain(breakeven), "net_credit": _plain(credit)}
        main.updated_at = timezone.now()
        out[(main.account_id, main.symbol)] = breakeven
    update_many(mains, ["meta", "updated_at"])
    return out
