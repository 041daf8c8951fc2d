"""Binance sizing rules: exchangeInfo parsed and cached, quantities rounded down to the step, and orders under
Binance's minimums refused by us, with the numbers, before anything is sent."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.cache import cache

from brokers.adapters.base import BrokerTransient, OrderRequest
from brokers.adapters.binance import BinanceAdapter
from brokers.models import Broker, BrokerAccount
from brokers.services import account_create
from brokers.services.binance_rules import (
    BinanceRuleError,
    SymbolFilters,
    binance_price,
    binance_quantity,
    parse_exchange_info,
    symbol_filters_get,
)
from brokers.services.planning import PlanRejected

D = Decimal



def adapter_for(owner, server, market="futures") -> BinanceAdapter:
    account, _ = account_create(owner=owner, label="Binance", broker=Broker.BINANCE, mode=BrokerAccount.Mode.LIVE,
                                currency="USDT", api_key=server.api_key, api_secret=server.api_secret,
                                options={"market": market})
    return BinanceAdapter(account)


def filters(**overrides) -> SymbolFilters:
    values = {"symbol": "BTCUSDT", "market": "futures", "base_asset": "BTC", "quote_asset": "USDT",
              "status": "TRADING", "tick_size": D("0.10"), "min_price": D("0.10"), "step_size": D("0.001"),
              "min_qty": D("0.001"), "max_qty": D("1000"), "market_step_size": D("0.001"),
              "market_min_qty": D("0.001"), "market_max_qty": D("120"), "min_notional": D("100")}
    return SymbolFilters(**(values | overrides))


# -- exchangeInfo -----------------------------------------------------------------------------------------------------
def test_spot_and_futures_exchange_info_are_parsed_into_filters(owner, binance):
    futures = symbol_filters_get(adapter=adapter_for(owner, binance), symbol="BTCUSDT", market="futures")
    assert (futures.tick_size, futures.step_size, futures.min_qty, futures.market_max_qty, futures.min_notional) == (
        D("0.10"), D("0.001"), D("0.001"), D("120"), D("100"))
    spot = symbol_filters_get(adapter=adapter_for(owner, binance, "spot"), symbol="BTCUSDT", market="spot")
    assert (spot.tick_size, spot.step_size, spot.min_qty, spot.market_step_size, spot.min_notional) == (
        D("0.01"), D("0.00001"), D("0.00001"), D("0"), D("5"))
    assert (spot.base_asset, spot.quote_asset, spot.notional_applies_to_market) == ("BTC", "USDT", True)


def test_legacy_spot_min_notional_filter_is_understood():
    raw = {"symbols": [{"symbol": "BNBBTC", "status": "TRADING", "baseAsset": "BNB", "quoteAsset": "BTC", "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "0.00000100", "maxPrice": "100.0", "tickSize": "0.00000100"},
        {"filterType": "LOT_SIZE", "minQty": "0.01000000", "maxQty": "9000.0", "stepSize": "0.01000000"},
        {"filterType": "MIN_NOTIONAL", "minNotional": "0.00010000", "applyToMarket": False, "avgPriceMins": 5}]}]}
    [f] = parse_exchange_info(raw, market="spot").values()
    assert (f.min_notional, f.notional_applies_to_market, f.market_step_size) == (D("0.0001"), False, D("0"))


def test_exchange_info_is_cached_and_refreshed_when_stale(owner, binance):
    adapter = adapter_for(owner, binance)
    for symbol in ("BTCUSDT", "ETHUSDT", "BTCUSDT"):
        symbol_filters_get(adapter=adapter, symbol=symbol, market="futures")
    assert len(binance.calls("/fapi/v1/exchangeInfo")) == 1
    cache.delete("binance:rules:futures:fresh")  # the TTL passed
    symbol_filters_get(adapter=adapter, symbol="BTCUSDT", market="futures")
    assert len(binance.calls("/fapi/v1/exchangeInfo")) == 2


def test_new_filters_apply_after_refresh(owner, binance):
    adapter = adapter_for(owner, binance)
    assert symbol_filters_get(adapter=adapter, symbol="BTCUSDT", market="futures").min_notional == D("100")
    binance.specs["futures"]["BTCUSDT"].min_notional = "50"
    cache.delete("binance:rules:futures:fresh")
    assert symbol_filters_get(adapter=adapter, symbol="BTCUSDT", market="futures").min_notional == D("50")


def test_stale_filters_are_used_when_the_refresh_fails(owner, binance):
    adapter = adapter_for(owner, binance)
    symbol_filters_get(adapter=adapter, symbol="BTCUSDT", market="futures")
    cache.delete("binance:rules:futures:fresh")
    binance.fault("429", path="/fapi/v1/exchangeInfo")
    assert symbol_filters_get(adapter=adapter, symbol="BTCUSDT", market="futures").step_size == D("0.001")
    assert [r.status for r in binance.calls("/fapi/v1/exchangeInfo")] == [200, 429]


def test_no_filters_at_all_is_a_transient_failure(owner, binance):
    binance.fault("429", path="/fapi/v1/exchangeInfo")
    with pytest.raises(BrokerTransient):
        symbol_filters_get(adapter=adapter_for(owner, binance), symbol="BTCUSDT", market="futures")


def test_unknown_symbol_is_rejected_after_one_refresh_per_minute(owner, binance):
    adapter = adapter_for(owner, binance)
    symbol_filters_get(adapter=adapter, symbol="BTCUSDT", market="futures")
    for _ in range(2):
        with pytest.raises(BinanceRuleError, match="BTC/USDT is not listed on Binance futures") as exc:
            symbol_filters_get(adapter=adapter, symbol="BTC/USDT", market="futures")
    assert exc.value.code == "unknown_symbol" and isinstance(exc.value, PlanRejected)
    assert len(binance.calls("/fapi/v1/exchangeInfo")) == 2  # the first miss refreshed; the second did not


# -- quantity --------------------------------------------------------------------------------------------------------
def test_quantity_from_margin_times_leverage_over_price_rounds_down_to_the_step():
    # 50 USDT × 5 ÷ 95234.5 = 0.0026249… → 0.002 (never up: 0.003 would spend more than the margin allows)
    assert binance_quantity(symbol_filters=filters(), margin=50, leverage=5, price="95234.5") == D("0.002")


def test_quantity_from_qty_rounds_down_to_the_step():
    assert binance_quantity(symbol_filters=filters(), qty="0.0039", price="95234.5") == D("0.003")
    assert str(binance_quantity(symbol_filters=filters(step_size=D("1"), market_step_size=D("1"), min_qty=D("1"),
                                                        min_notional=D("5")), qty="12.9", price="187.45")) == "12"


def test_under_min_notional_is_refused_with_the_numbers():
    f = filters(step_size=D("0.0001"), min_qty=D("0.0001"), market_step_size=D("0.0001"), market_min_qty=D("0.0001"))
    with pytest.raises(BinanceRuleError) as exc:
        binance_quantity(symbol_filters=f, qty="0.0004", price="95234.5")
    assert exc.value.code == "below_min_notional"
    assert exc.value.message.startswith(
        "0.0004 BTC × 95234.5 = 38.09 USDT is under Binance's minimum notional of 100 USDT for BTCUSDT")
    assert exc.value.details["min_notional"] == D("100") and exc.value.details["qty"] == D("0.0004")


def test_margin_too_small_for_the_minimum_is_refused():
    # 20 USDT × 5 = 100 USDT → 0.00105 BTC → 0.001 BTC = 95.23 USDT < 100 USDT: rounding down crossed the minimum
    with pytest.raises(BinanceRuleError, match=r"0.001 BTC × 95234.5 = 95.23 USDT is under .* 100 USDT"):
        binance_quantity(symbol_filters=filters(), margin=20, leverage=5, price="95234.5")


def test_under_min_qty_is_refused_with_the_numbers():
    with pytest.raises(BinanceRuleError) as exc:
        binance_quantity(symbol_filters=filters(), qty="0.0004", price="95234.5")
    assert exc.value.code == "below_min_qty"
    assert "0.0004 BTC rounds down to 0 BTC (step 0.001), under Binance's minimum quantity of 0.001 BTC" in (
        exc.value.message)


def test_market_orders_use_market_lot_size_when_it_is_coarser():
    f = filters(market_step_size=D("0.01"), market_max_qty=D("5"), min_notional=D("0"))
    assert binance_quantity(symbol_filters=f, qty="0.019", price="100", order_type="market") == D("0.01")
    assert binance_quantity(symbol_filters=f, qty="0.019", price="100", order_type="limit") == D("0.019")
    with pytest.raises(BinanceRuleError, match="over Binance's maximum of 5 BTC per market order"):
        binance_quantity(symbol_filters=f, qty="6", price="100", order_type="market")
    assert binance_quantity(symbol_filters=f, qty="6", price="100", order_type="limit") == D("6")


def test_spot_market_lot_size_of_zero_means_lot_size_only(owner, binance):
    f = symbol_filters_get(adapter=adapter_for(owner, binance, "spot"), symbol="BTCUSDT", market="spot")
    assert binance_quantity(symbol_filters=f, qty="0.0012345", price="95234.5") == D("0.00123")


def test_futures_reduce_only_is_exempt_from_the_notional_minimum():
    assert binance_quantity(symbol_filters=filters(), qty="0.001", price="95234.5", reduce_only=True) == D("0.001")
    with pytest.raises(BinanceRuleError):
        binance_quantity(symbol_filters=filters(market="spot", min_notional=D("100")), qty="0.001",
                         price="95234.5", reduce_only=True)


def test_no_price_no_size():
    with pytest.raises(BinanceRuleError, match="needs a price") as exc:
        binance_quantity(symbol_filters=filters(), margin=50, leverage=5, price=None)
    assert exc.value.code == "no_price"


# -- prices ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tick", "price", "expected"), [
    ("0.10", "90000.04", "90000"), ("0.10", "90000.06", "90000.1"), ("0.01", "3456.789", "3456.79"),
    ("0.00000100", "0.0000123456", "0.000012"),
])
def test_sl_tp_prices_are_rounded_to_the_tick(tick, price, expected):
    f = filters(tick_size=D(tick), min_price=D(tick))
    assert str(binance_price(symbol_filters=f, price=D(price))) == expected


# -- end to end: a refused size never reaches Binance ---------------------------------------------------------------
def test_too_small_order_is_never_sent(owner, binance):
    adapter = adapter_for(owner, binance)
    f = symbol_filters_get(adapter=adapter, symbol="BTCUSDT", market="futures")
    with pytest.raises(BinanceRuleError):
        qty = binance_quantity(symbol_filters=f, margin=10, leverage=5, price=binance.prices["futures"]["BTCUSDT"])
        adapter.place_order(OrderRequest(client_order_id="TF1M", symbol="BTCUSDT", side="buy", qty=qty))
    assert binance.calls("/fapi/v1/order") == []
    qty = binance_quantity(symbol_filters=f, margin=50, leverage=5, price=binance.prices["futures"]["BTCUSDT"])
    result = adapter.place_order(OrderRequest(client_order_id="TF2M", symbol="BTCUSDT", side="buy", qty=qty,
                                              extra={"leverage": 5}))
    assert result.status == "filled" and result.filled_qty == D("0.002")  # accepted the first time
