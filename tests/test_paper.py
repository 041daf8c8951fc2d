"""The paper broker: fill prices, option estimates, limit orders, idempotency, balance after a round trip."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from brokers.adapters import get_adapter
from brokers.adapters.base import BrokerRejected, OrderRequest
from brokers.adapters.paper import OPTION_TICK, PaperAdapter, option_premium_estimate, quote_set
from brokers.models import Broker, PaperOrder, Quote
from brokers.services import position_apply_fill

D = Decimal
NIFTY_SPOT = D("24481")


def order(cid: str = "T1M", symbol: str = "BTCUSDT", side: str = "buy", qty: str = "1", **kw) -> OrderRequest:
    return OrderRequest(client_order_id=cid, symbol=symbol, side=side, qty=D(qty), **kw)


def option_order(cid: str, strike: str, option_type: str, spot=NIFTY_SPOT, **option) -> OrderRequest:
    extra = {"option": {"underlying": "NIFTY", "strike": strike, "option_type": option_type,
                        "spot": str(spot) if spot is not None else None, **option}}
    return order(cid, symbol=f"NIFTY {strike} {option_type}", side="sell", qty="65", extra=extra)


@pytest.fixture
def adapter(paper) -> PaperAdapter:
    account, _ = paper
    return get_adapter(account)


def last_quote(symbol: str) -> Decimal:
    return Quote.objects.get(broker=Broker.PAPER, symbol=symbol).price


def test_paper_account_gets_the_paper_adapter(adapter):
    assert isinstance(adapter, PaperAdapter)
    adapter.validate_credentials()  # nothing to validate: never raises


def test_market_order_fills_at_the_signal_price_and_becomes_the_last_quote(adapter):
    quote_set(broker=Broker.PAPER, symbol="BTCUSDT", price=D("48000"))
    result = adapter.place_order(order(qty="0.5", reference_price=D("50000.5")))
    assert (result.status, result.filled_qty, result.avg_price) == ("filled", D("0.5"), D("50000.5"))
    assert result.broker_order_id.startswith("P")
    assert last_quote("BTCUSDT") == D("50000.5")


def test_market_order_without_a_price_fills_at_the_last_quote(adapter):
    quote_set(broker=Broker.PAPER, symbol="ETHUSDT", price=D("3000.25"))
    result = adapter.place_order(order(symbol="ETHUSDT", side="sell", qty="2"))
    assert (result.status, result.avg_price) == ("filled", D("3000.25"))


def test_a_fill_sets_the_price_for_the_next_order(adapter):
    adapter.place_order(order("A1M", reference_price=D("101")))
    assert adapter.place_order(order("A2M", side="sell")).avg_price == D("101")
    assert adapter.last_prices(["BTCUSDT", "UNKNOWN"]) == {"BTCUSDT": D("101")}


def test_quotes_are_per_symbol(adapter):
    quote_set(broker=Broker.PAPER, symbol="AAA", price=D("10"))
    with pytest.raises(BrokerRejected):
        adapter.place_order(order(symbol="BBB"))


def test_no_known_price_is_rejected_with_a_clear_message(adapter):
    with pytest.raises(BrokerRejected) as info:
        adapter.place_order(order(symbol="NOPRICE"))
    assert info.value.code == "no_price"
    assert "No price known for NOPRICE" in info.value.message
    assert "price" in info.value.message.split(":", 1)[1]  # says what to send
    assert not PaperOrder.objects.exists()


def test_option_without_spot_or_quote_is_rejected(adapter):
    with pytest.raises(BrokerRejected) as info:
        adapter.place_order(option_order("O0M", "25000", "PE", spot=None))
    assert info.value.code == "no_price"


def test_option_fills_at_an_estimate_from_the_spot(adapter):
    put = adapter.place_order(option_order("O1M", "25000", "PE"))
    call = adapter.place_order(option_order("O2M", "25000", "CE"))
    # In the money put (strike above spot): worth at least its intrinsic value; the far call is cheap.
    assert put.avg_price >= D("25000") - NIFTY_SPOT
    assert D("0") < call.avg_price < put.avg_price
    for price in (put.avg_price, call.avg_price):
        assert price % OPTION_TICK == 0
    assert last_quote("NIFTY 25000 PE") == put.avg_price


def test_option_quote_beats_the_estimate(adapter):
    quote_set(broker=Broker.PAPER, symbol="NIFTY 25000 PE", price=D("612.35"))
    assert adapter.place_order(option_order("O3M", "25000", "PE")).avg_price == D("612.35")


@pytest.mark.parametrize("strike", ["23500", "24000", "24500", "25000", "25500"])
def test_option_estimates_respect_intrinsic_value_and_parity(strike):
    k = D(strike)
    put = option_premium_estimate(spot=NIFTY_SPOT, strike=k, option_type="PE", expiry=None)
    call = option_premium_estimate(spot=NIFTY_SPOT, strike=k, option_type="CE", expiry=None)
    assert put >= max(k - NIFTY_SPOT, D(0))
    assert call >= max(NIFTY_SPOT - k, D(0))
    assert put >= OPTION_TICK and call >= OPTION_TICK
    # Put-call parity without rates: C - P = S - K, within the rounding of both to a tick.
    if call > OPTION_TICK and put > OPTION_TICK:
        assert abs((call - put) - (NIFTY_SPOT - k)) <= OPTION_TICK


def test_option_estimate_grows_with_time_to_expiry():
    today = timezone.localdate()
    near = option_premium_estimate(spot=NIFTY_SPOT, strike=D("24500"), option_type="CE",
                                   expiry=today + timedelta(days=2))
    far = option_premium_estimate(spot=NIFTY_SPOT, strike=D("24500"), option_type="CE",
                                  expiry=today + timedelta(days=60))
    assert far > near
    assert option_premium_estimate(spot=NIFTY_SPOT, strike=D("24500"), option_type="CE",
                                   expiry=today - timedelta(days=3)) > 0  # an expired date still prices


def test_option_estimate_uses_the_contract_expiry(adapter):
    expiry = (timezone.localdate() + timedelta(days=45)).isoformat()
    with_expiry = adapter.place_order(option_order("O4M", "24500", "CE", expiry=expiry)).avg_price
    week_out = option_premium_estimate(spot=NIFTY_SPOT, strike=D("24500"), option_type="CE", expiry=None)
    assert with_expiry > week_out


@pytest.mark.parametrize("side, limit", [("buy", "101"), ("buy", "100"), ("sell", "99"), ("sell", "100")])
def test_marketable_limit_orders_fill_no_worse_than_the_limit(adapter, side, limit):
    quote_set(broker=Broker.PAPER, symbol="BTCUSDT", price=D("100"))
    result = adapter.place_order(order(side=side, order_type="limit", price=D(limit)))
    assert result.status == "filled"
    if side == "buy":
        assert result.avg_price <= D(limit)
    else:
        assert result.avg_price >= D(limit)


@pytest.mark.parametrize("side, limit", [("buy", "99.5"), ("sell", "100.5")])
def test_limit_orders_away_from_the_market_are_rejected(adapter, side, limit):
    quote_set(broker=Broker.PAPER, symbol="BTCUSDT", price=D("100"))
    with pytest.raises(BrokerRejected) as info:
        adapter.place_order(order(side=side, order_type="limit", price=D(limit)))
    assert info.value.code == "limit_not_marketable"
    assert limit in info.value.message and "100" in info.value.message
    assert not PaperOrder.objects.exists()
    assert last_quote("BTCUSDT") == D("100")


def test_stop_orders_are_not_simulated(adapter):
    with pytest.raises(BrokerRejected) as info:
        adapter.place_order(order(order_type="stop", reference_price=D("1")))
    assert info.value.code == "unsupported_type"


def test_same_client_order_id_returns_the_first_fill(adapter):
    first = adapter.place_order(order("DUP1", qty="3", reference_price=D("100")))
    second = adapter.place_order(order("DUP1", qty="3", reference_price=D("120")))
    assert second == first
    assert PaperOrder.objects.filter(client_order_id="DUP1").count() == 1
    assert adapter.order_status(client_order_id="DUP1") == first


def test_client_ids_are_per_account(adapter, other):
    from tests.factories import paper_account

    other_adapter = get_adapter(paper_account(owner=other)[0])
    mine = adapter.place_order(order("SAME", reference_price=D("100")))
    theirs = other_adapter.place_order(order("SAME", reference_price=D("200")))
    assert (mine.avg_price, theirs.avg_price) == (D("100"), D("200"))
    assert adapter.order_status(client_order_id="SAME").avg_price == D("100")


def test_order_status_of_an_unknown_id_is_none(adapter):
    assert adapter.order_status(client_order_id="NEVER") is None


def test_cancel_says_there_is_nothing_open(adapter):
    with pytest.raises(BrokerRejected, match="nothing open"):
        adapter.cancel_order(client_order_id="X")


def _book(adapter: PaperAdapter, cid: str, side: str, qty: str, price: str):
    result = adapter.place_order(order(cid, side=side, qty=qty, reference_price=D(price)))
    return position_apply_fill(account=adapter.account, symbol="BTCUSDT", side=side, qty=result.filled_qty,
                               price=result.avg_price)


def test_balance_and_equity_after_a_realized_round_trip(adapter):
    assert adapter.balance().cash == adapter.balance().equity == D("1000000")
    _book(adapter, "R1M", "buy", "10", "100")
    _book(adapter, "R2M", "buy", "10", "110")  # average 105
    assert adapter.positions()[0].qty == D("20")
    position, realized = _book(adapter, "R3M", "sell", "20", "112.5")
    assert realized == D("150")
    assert position.status == "closed" and position.realized_pnl == D("150")
    balance = adapter.balance()
    assert (balance.currency, balance.cash, balance.equity) == ("INR", D("1000150"), D("1000150"))
    adapter.account.refresh_from_db()
    assert adapter.account.balance == D("1000150")
    assert adapter.positions() == []


def test_equity_includes_open_positions_marked_to_market(adapter):
    _book(adapter, "E1M", "sell", "2", "50000")
    _book(adapter, "E2M", "buy", "1", "49000")  # realizes 1000 on half, short 1 left at 50000
    _book(adapter, "E3M", "sell", "1", "48000")  # adds: short 2 @ 49000, marked at 48000
    balance = adapter.balance()
    assert balance.cash == D("1001000")
    assert balance.equity == D("1001000") + D("2000")
    [held] = adapter.positions()
    assert (held.qty, held.avg_price, held.last_price) == (D("-2"), D("49000"), D("48000"))
