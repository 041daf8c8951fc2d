"""brokers/calc.py: netting fills, SL/TP prices, step rounding and hedge size."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokers.calc import ZERO, Net, hedge_lots, net_fill, round_to_step, round_to_tick, sl_tp_prices

D = Decimal


def fill(qty, avg, fill_qty, price) -> Net:
    return net_fill(qty=D(qty), avg_price=D(avg), fill_qty=D(fill_qty), fill_price=D(price))


# --- net_fill, by example --------------------------------------------------------------------------


def test_open_from_flat_long_and_short():
    assert fill(0, 0, 10, 100) == Net(D(10), D(100), ZERO)
    assert fill(0, 0, -3, 250) == Net(D(-3), D(250), ZERO)


def test_add_to_a_long_moves_the_average():
    assert fill(10, 100, 10, 110) == Net(D(20), D(105), ZERO)


def test_add_to_a_short_moves_the_average():
    assert fill(-10, 100, -30, 120) == Net(D(-40), D(115), ZERO)


def test_reduce_a_long_realizes_at_the_old_average():
    assert fill(10, 100, -4, 120) == Net(D(6), D(100), D(80))


def test_reduce_a_short_realizes_mirrored():
    assert fill(-10, 100, 4, 90) == Net(D(-6), D(100), D(40))
    assert fill(-10, 100, 4, 130).realized == D(-120)


def test_close_a_long_at_a_loss():
    assert fill(10, 100, -10, 90) == Net(ZERO, ZERO, D(-100))


def test_close_a_short_at_a_profit():
    assert fill(-2, D("50000.5"), 2, D("49000.25")) == Net(ZERO, ZERO, D("2000.50"))


def test_reverse_long_to_short_realizes_the_old_and_opens_the_rest_at_the_fill():
    assert fill(10, 100, -15, 110) == Net(D(-5), D(110), D(100), reversed=True)


def test_reverse_short_to_long():
    assert fill(-4, 200, 10, 150) == Net(D(6), D(150), D(200), reversed=True)


def test_zero_fill_changes_nothing():
    assert fill(7, 12, 0, 99) == Net(D(7), D(12), ZERO)


# --- net_fill, properties --------------------------------------------------------------------------

qtys = st.decimals(min_value=D("0.001"), max_value=D(1000), places=3)
prices = st.decimals(min_value=D("0.05"), max_value=D(100000), places=2)
signed_fills = st.tuples(qtys, st.booleans(), prices).map(lambda t: (t[0] if t[1] else -t[0], t[2]))
TOLERANCE = D("1e-9")  # averages divide, so allow for the 28th significant digit


def _run(fills: list[tuple[Decimal, Decimal]]) -> tuple[Decimal, Decimal, Decimal]:
    qty, avg, realized = ZERO, ZERO, ZERO
    for fill_qty, price in fills:
        net = net_fill(qty=qty, avg_price=avg, fill_qty=fill_qty, fill_price=price)
        qty, avg, realized = net.qty, net.avg_price, realized + net.realized
    return qty, avg, realized


@given(st.lists(signed_fills, max_size=30))
def test_quantity_is_the_signed_sum_of_fills(fills):
    qty, avg, _ = _run(fills)
    assert qty == sum((q for q, _ in fills), ZERO)
    if qty == ZERO:
        assert avg == ZERO


@given(st.lists(signed_fills, min_size=1, max_size=30), prices)
@settings(max_examples=300)
def test_round_trip_realized_pnl_equals_the_cash_flow(fills, exit_price):
    qty, _, _ = _run(fills)
    fills = [*fills, (-qty, exit_price)]  # flatten at the end
    final_qty, final_avg, realized = _run(fills)
    assert (final_qty, final_avg) == (ZERO, ZERO)
    cash_flow = sum((-q * p for q, p in fills), ZERO)  # buying pays, selling receives
    assert abs(realized - cash_flow) < TOLERANCE


@given(st.lists(signed_fills, min_size=1, max_size=30))
def test_open_average_lies_within_the_fill_prices(fills):
    qty, avg, _ = _run(fills)
    if qty != ZERO:
        all_prices = [p for _, p in fills]
        assert min(all_prices) - TOLERANCE <= avg <= max(all_prices) + TOLERANCE


@given(qtys, st.booleans(), prices, qtys, prices)
def test_an_opposite_fill_realizes_only_the_closed_part(qty, long, avg, fill_qty, price):
    held = qty if long else -qty
    net = net_fill(qty=held, avg_price=avg, fill_qty=-fill_qty if long else fill_qty, fill_price=price)
    closed = min(qty, fill_qty)
    assert net.realized == closed * (price - avg) * (1 if long else -1)
    assert net.reversed == (fill_qty > qty)
    if fill_qty < qty:
        assert net.avg_price == avg  # a reduce keeps the entry average
    elif fill_qty > qty:
        assert net.avg_price == price  # the remainder opens at the fill price


# --- sl_tp_prices ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sl, tp, expected", [
    ({"mode": "price", "value": "97"}, {"mode": "price", "value": "112.5"}, (D("97"), D("112.5"))),
    ({"mode": "pct", "value": "2"}, {"mode": "pct", "value": "4"}, (D("98"), D("104"))),
    ({"mode": "points", "value": "5"}, {"mode": "points", "value": "10"}, (D("95"), D("110"))),
    ({"mode": "pct", "value": "2"}, {"mode": "rr", "value": "3"}, (D("98"), D("106"))),
    ({"mode": "points", "value": "5"}, {"mode": "rr", "value": "1.5"}, (D("95"), D("107.5"))),
    ({"mode": "price", "value": "90"}, {"mode": "rr", "value": "2"}, (D("90"), D("120"))),
    ({"mode": "pct", "value": "1"}, None, (D("99"), None)),
    (None, {"mode": "points", "value": "3"}, (None, D("103"))),
    (None, None, (None, None)),
])
def test_buy_stop_below_target_above(sl, tp, expected):
    assert sl_tp_prices(side="buy", entry=D("100"), sl=sl, tp=tp) == expected


@pytest.mark.parametrize("sl, tp, expected", [
    ({"mode": "price", "value": "103"}, {"mode": "price", "value": "90"}, (D("103"), D("90"))),
    ({"mode": "pct", "value": "2"}, {"mode": "pct", "value": "4"}, (D("102"), D("96"))),
    ({"mode": "points", "value": "5"}, {"mode": "points", "value": "10"}, (D("105"), D("90"))),
    ({"mode": "points", "value": "5"}, {"mode": "rr", "value": "3"}, (D("105"), D("85"))),
    ({"mode": "pct", "value": "1"}, {"mode": "rr", "value": "2"}, (D("101"), D("98"))),
])
def test_sell_stop_above_target_below(sl, tp, expected):
    assert sl_tp_prices(side="sell", entry=D("100"), sl=sl, tp=tp) == expected


def test_rr_without_stop_and_unknown_mode_raise():
    with pytest.raises(ValueError, match="stop loss"):
        sl_tp_prices(side="buy", entry=D(100), sl=None, tp={"mode": "rr", "value": "2"})
    with pytest.raises(ValueError, match="unknown mode"):
        sl_tp_prices(side="buy", entry=D(100), sl={"mode": "atr", "value": "2"}, tp=None)


@given(st.sampled_from(["buy", "sell"]), prices, st.sampled_from(["pct", "points"]),
       st.decimals(min_value=D("0.1"), max_value=D(50), places=1), st.decimals(min_value=D("0.1"), max_value=D(5),
                                                                               places=1))
def test_stop_and_target_are_on_the_right_sides(side, entry, mode, value, rr):
    sl = {"mode": mode, "value": str(value)}
    sl_price, tp_price = sl_tp_prices(side=side, entry=entry, sl=sl, tp={"mode": "rr", "value": str(rr)})
    if side == "buy":
        assert sl_price < entry < tp_price
    else:
        assert tp_price < entry < sl_price
    assert abs(tp_price - entry) == abs(entry - sl_price) * rr


# --- rounding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, step, expected", [
    ("0.123456", "0.001", "0.123"),
    ("1.999", "0.5", "1.5"),
    ("130", "65", "130"),
    ("129.99", "65", "65"),
    ("0.00099", "0.001", "0"),
    ("5.5", "0", "5.5"),  # no step rule: unchanged
])
def test_round_to_step_examples(value, step, expected):
    assert round_to_step(D(value), D(step)) == D(expected)


@given(st.decimals(min_value=D(0), max_value=D(10**9), places=8),
       st.sampled_from([D("0.00001"), D("0.001"), D("0.1"), D("0.5"), D(1), D(25), D(65)]))
def test_round_to_step_never_rounds_up(value, step):
    rounded = round_to_step(value, step)
    assert rounded <= value
    assert value - rounded < step
    assert rounded % step == 0


@pytest.mark.parametrize("value, tick, expected", [
    ("100.02", "0.05", "100.00"), ("100.025", "0.05", "100.05"), ("100.074", "0.05", "100.05"),
    ("7.3", "0", "7.3"),
])
def test_round_to_tick_is_nearest_half_up(value, tick, expected):
    assert round_to_tick(D(value), D(tick)) == D(expected)


# --- hedge lots ------------------------------------------------------------------------------------


@pytest.mark.parametrize("lots, pct, expected", [
    (10, "30", 3), (1, "30", 0), (2, "30", 1), (5, "30", 2), (4, "30", 1), (3, "0", 0), (7, "100", 7),
    (20, "12.5", 3),
])
def test_hedge_lots(lots, pct, expected):
    assert hedge_lots(lots=lots, hedge_pct=D(pct)) == expected


@given(st.integers(min_value=1, max_value=1000), st.decimals(min_value=0, max_value=100, places=2))
def test_hedge_never_exceeds_the_main_leg(lots, pct):
    assert 0 <= hedge_lots(lots=lots, hedge_pct=pct) <= lots
