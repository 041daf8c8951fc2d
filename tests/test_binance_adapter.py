"""BinanceAdapter: the real ``binance.Client`` against the local Binance in ``tests/protocol/binance_server.py``.

The server verifies every signature, enforces the exchange filters and limits, and records each request, so
these tests assert on what actually went over the wire: which endpoints, in which order, how many times.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from brokers.adapters.base import (
    BrokerAmbiguous,
    BrokerAuthError,
    BrokerRejected,
    BrokerTransient,
    OrderRequest,
)
from brokers.adapters.binance import BinanceAdapter
from brokers.models import Broker, BrokerAccount, Order, Position
from brokers.services import account_create
from brokers.services.execution import _submit
from brokers.services.planning import LegPlan

pytestmark = pytest.mark.slow
D = Decimal


def binance_account(owner, server, *, market="futures", key=None, secret=None, **options) -> BrokerAccount:
    account, _ = account_create(
        owner=owner, label=f"Binance {market}", broker=Broker.BINANCE, mode=BrokerAccount.Mode.LIVE,
        currency="USDT", api_key=key or server.api_key, api_secret=secret or server.api_secret,
        options={"market": market, **options})
    return account


def order(client_id="TF1M", symbol="BTCUSDT", side="buy", qty="0.002", **kw) -> OrderRequest:
    return OrderRequest(client_order_id=client_id, symbol=symbol, side=side, qty=D(qty), **kw)


def signed_statuses(server):
    return [(r.path, r.status, r.code) for r in server.log if r.path not in ("/api/v3/ping",)]


# -- credentials ------------------------------------------------------------------------------------------------
def test_wrong_secret_is_rejected_by_the_signature_check(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance, secret="f" * 64))
    with pytest.raises(BrokerAuthError) as exc:
        adapter.validate_credentials()
    assert "Signature for this request is not valid." in exc.value.message
    assert [(r.path, r.status, r.code) for r in binance.log] == [("/fapi/v2/account", 400, -1022)]


def test_valid_key_passes_signature_and_restriction_checks(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance, market="spot"))
    adapter.validate_credentials()
    assert [(r.path, r.status) for r in binance.log] == [("/api/v3/account", 200),
                                                          ("/sapi/v1/account/apiRestrictions", 200)]
    assert all(r.api_key == binance.api_key and "signature" in r.params for r in binance.log)
    assert adapter.warnings == []


def test_key_that_can_withdraw_is_refused_with_the_reason(owner, binance):
    key, secret = binance.add_account(can_withdraw=True)
    adapter = BinanceAdapter(binance_account(owner, binance, key=key, secret=secret))
    with pytest.raises(BrokerRejected) as exc:
        adapter.validate_credentials()
    assert exc.value.code == "withdrawals_enabled"
    assert "can withdraw funds" in exc.value.message and "Enable Withdrawals" in exc.value.message


def test_key_without_ip_whitelist_is_accepted_with_a_warning(owner, binance):
    key, secret = binance.add_account(ip_restrict=False)
    adapter = BinanceAdapter(binance_account(owner, binance, key=key, secret=secret))
    adapter.validate_credentials()
    assert len(adapter.warnings) == 1 and "no IP whitelist" in adapter.warnings[0]
    assert "30 days" in adapter.warnings[0]


def test_futures_account_needs_a_futures_enabled_key(owner, binance):
    key, secret = binance.add_account(futures=False)
    adapter = BinanceAdapter(binance_account(owner, binance, key=key, secret=secret))
    with pytest.raises(BrokerRejected, match="Enable Futures"):
        adapter.validate_credentials()


def test_a_futures_account_in_hedge_mode_is_refused_with_how_to_switch(owner, binance):
    binance.account().dual_side = True
    adapter = BinanceAdapter(binance_account(owner, binance))
    with pytest.raises(BrokerRejected) as exc:
        adapter.validate_credentials()
    assert exc.value.code == "hedge_mode"
    assert "Hedge Mode" in exc.value.message and "One-way Mode" in exc.value.message


def test_an_order_after_switching_to_hedge_mode_says_why_it_failed(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    binance.account().dual_side = True  # switched in the Binance app after connecting
    with pytest.raises(BrokerRejected) as exc:
        adapter.place_order(order())
    assert exc.value.code == "-4061" and "Position Mode" in exc.value.message
    assert binance.account().positions.get("BTCUSDT", [D(0)])[0] == 0


def test_testnet_account_uses_testnet_urls_and_skips_sapi(owner, binance, settings):
    settings.BINANCE_FUTURES_URL = "http://127.0.0.1:9/fapi"  # live URL unreachable: testnet must not use it
    adapter = BinanceAdapter(binance_account(owner, binance, testnet=True))
    adapter.validate_credentials()
    assert [r.path for r in binance.log] == ["/fapi/v2/account", "/fapi/v1/positionSide/dual"]


def test_missing_credentials_fail_before_any_request(owner, binance):
    account = binance_account(owner, binance)
    account.api_secret = ""
    with pytest.raises(BrokerAuthError, match="No Binance API key"):
        BinanceAdapter(account).validate_credentials()
    assert binance.log == []


# -- orders ------------------------------------------------------------------------------------------------------
def test_spot_market_buy_fills_with_our_client_order_id(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance, market="spot"))
    result = adapter.place_order(order(qty="0.001"))
    assert (result.status, result.filled_qty, result.avg_price) == ("filled", D("0.001"), D("95234.5"))
    [post] = binance.calls("/api/v3/order", "POST")
    assert post.params["newClientOrderId"] == "TF1M" and post.params["type"] == "MARKET"
    assert post.params["quantity"] == "0.001"
    assert binance.account().spot["BTC"][0] == D("0.001")


def test_futures_market_sets_margin_type_and_leverage_before_the_entry(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    result = adapter.place_order(order(extra={"market": "futures", "leverage": 10, "margin_type": "isolated"}))
    assert [r.path for r in binance.log] == ["/fapi/v1/marginType", "/fapi/v1/leverage", "/fapi/v1/order"]
    assert binance.log[0].params["marginType"] == "ISOLATED" and binance.log[1].params["leverage"] == "10"
    assert binance.log[2].params["newOrderRespType"] == "RESULT"
    assert (result.status, result.filled_qty, result.avg_price) == ("filled", D("0.002"), D("95234.5"))
    assert binance.account().positions["BTCUSDT"][0] == D("0.002")
    assert binance.account().leverage["BTCUSDT"] == 10


def test_margin_type_already_set_is_not_an_error(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance, margin_type="CROSSED"))
    result = adapter.place_order(order(extra={"leverage": 5}))
    assert result.status == "filled"
    assert [(r.path, r.code) for r in binance.log] == [
        ("/fapi/v1/marginType", -4046), ("/fapi/v1/leverage", None), ("/fapi/v1/order", None)]


@pytest.mark.parametrize(("market", "qty", "code", "text"), [
    ("spot", "0.000015", "-1013", "Filter failure: LOT_SIZE"),
    ("futures", "0.0015", "-1111", "Precision is over the maximum"),
    ("futures", "0.001", "-4164", "Order's notional must be no smaller than 100"),
])
def test_exchange_filter_refusals_are_final_with_binances_code_and_message(owner, binance, market, qty, code, text):
    adapter = BinanceAdapter(binance_account(owner, binance, market=market))
    with pytest.raises(BrokerRejected) as exc:
        adapter.place_order(order(qty=qty))
    assert exc.value.code == code and text in exc.value.message


def test_insufficient_margin_is_rejected(owner, binance):
    key, secret = binance.add_account(wallet="5")
    adapter = BinanceAdapter(binance_account(owner, binance, key=key, secret=secret))
    with pytest.raises(BrokerRejected, match="Margin is insufficient") as exc:
        adapter.place_order(order())
    assert exc.value.code == "-2019"


def test_duplicate_open_client_id_is_refused_but_a_filled_id_can_be_reused(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance, market="spot"))
    adapter.place_order(order("TF7M", qty="0.001", order_type="limit", price=D("90000")))  # rests: open
    with pytest.raises(BrokerRejected, match="Duplicate order sent") as exc:
        adapter.place_order(order("TF7M", qty="0.001", order_type="limit", price=D("90000")))
    assert exc.value.code == "-2010"
    adapter.place_order(order("TF8M", qty="0.001"))
    assert adapter.place_order(order("TF8M", qty="0.001")).status == "filled"  # why ids alone are not idempotency


@pytest.mark.parametrize("client_id", ["TF:1M", "TF 1M", "T" * 37])
def test_client_ids_binance_or_the_signature_would_refuse_are_not_sent(owner, binance, client_id):
    adapter = BinanceAdapter(binance_account(owner, binance))
    with pytest.raises(BrokerRejected, match="cannot be sent to Binance") as exc:
        adapter.place_order(order(client_id))
    assert exc.value.code == "bad_client_id" and binance.log == []


def test_server_checks_the_client_id_pattern_and_signs_what_was_sent(owner, binance):
    client = BinanceAdapter(binance_account(owner, binance)).client
    from binance.exceptions import BinanceAPIException

    with pytest.raises(BinanceAPIException) as exc:  # "~" needs no URL encoding but is outside Binance's pattern
        client.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.002",
                                    newClientOrderId="TF~1M")
    assert exc.value.code == -1100 and "legal range" in exc.value.message
    with pytest.raises(BinanceAPIException) as exc:  # allowed by Binance, but sent encoded and signed raw
        client.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.002",
                                    newClientOrderId="TF:1M")
    assert exc.value.code == -1022


def test_market_order_answered_new_is_followed_until_filled(owner, binance):
    binance.defer_market_fills = True
    adapter = BinanceAdapter(binance_account(owner, binance))
    result = adapter.place_order(order("TF9M"))
    assert (result.status, result.filled_qty, result.avg_price) == ("filled", D("0.002"), D("95234.5"))
    assert [(r.method, r.path) for r in binance.log] == [("POST", "/fapi/v1/order"), ("GET", "/fapi/v1/order")]


def test_order_status_finds_an_order_by_client_id_and_none_for_unknown(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order("TF5M"))
    found = adapter.order_status(client_order_id="TF5M", symbol="BTCUSDT")
    assert (found.status, found.filled_qty) == ("filled", D("0.002"))
    assert adapter.order_status(client_order_id="TF404M", symbol="BTCUSDT") is None


# -- stop loss / take profit ---------------------------------------------------------------------------------------
def test_futures_sl_tp_go_to_algo_order_with_close_position(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order("TF2M"))
    results = adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.002"), client_order_id="TF2M",
                                       stop_loss=D("90000.04"), take_profit=D("99999.96"))
    posts = binance.calls("/fapi/v1/algoOrder", "POST")
    assert [(p.params["type"], p.params["triggerPrice"], p.params["clientAlgoId"]) for p in posts] == [
        ("STOP_MARKET", "90000", "TF2MSL"), ("TAKE_PROFIT_MARKET", "100000", "TF2MTP")]
    assert all(p.params["closePosition"] == "true" and "quantity" not in p.params and p.params["side"] == "SELL"
               for p in posts)
    assert [r.status for r in results] == ["open", "open"]
    assert not [r for r in binance.calls("/fapi/v1/order", "POST") if r.params["type"] != "MARKET"]
    assert all(r.code != -4120 for r in binance.log)


def test_placing_the_same_protection_twice_returns_the_first(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order("TF2M"))
    kwargs = {"symbol": "BTCUSDT", "entry_side": "buy", "qty": D("0.002"), "client_order_id": "TF2M",
              "stop_loss": D("90000")}
    [first] = adapter.place_protection(**kwargs)
    [again] = adapter.place_protection(**kwargs)  # a retried task
    assert again.broker_order_id == first.broker_order_id
    assert [r.code for r in binance.calls("/fapi/v1/algoOrder", "POST")] == [None, -4116]
    assert len(binance.account().algo) == 1


def test_spot_stop_loss_alone_is_a_stop_loss_order(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance, market="spot"))
    adapter.place_order(order("TF4M", qty="0.001"))
    [stop] = adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.001"), client_order_id="TF4M",
                                      stop_loss=D("90000"))
    [post] = [r for r in binance.calls("/api/v3/order", "POST") if r.params["type"] != "MARKET"]
    assert (post.params["type"], post.params["stopPrice"], post.params["newClientOrderId"]) == (
        "STOP_LOSS", "90000", "TF4MSL")
    assert stop.status == "open"
    with pytest.raises(BrokerRejected, match="no short positions"):
        adapter.place_protection(symbol="BTCUSDT", entry_side="sell", qty=D("0.001"), client_order_id="TF5M",
                                 stop_loss=D("99000"))


def test_reduce_only_protection_mode_sends_quantity(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance, protection="reduce_only"))
    adapter.place_order(order("TF2M"))
    adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.002"), client_order_id="TF2M",
                             stop_loss=D("90000"))
    [post] = binance.calls("/fapi/v1/algoOrder", "POST")
    assert (post.params["quantity"], post.params["reduceOnly"]) == ("0.002", "true")
    assert "closePosition" not in post.params


def test_old_order_endpoint_refuses_conditional_types(owner, binance):
    """Why SL/TP must use algoOrder: /fapi/v1/order answers -4120 since 2025-12-09 (sent raw, as the SDK reroutes)."""
    adapter = BinanceAdapter(binance_account(owner, binance))
    from binance.exceptions import BinanceAPIException

    with pytest.raises(BinanceAPIException) as exc:
        adapter.client._request_futures_api("post", "order", True, data={
            "symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET", "stopPrice": "90000", "closePosition": "true"})
    assert exc.value.code == -4120 and "Algo Order API" in exc.value.message


def test_protection_retried_after_timeout_is_not_doubled(owner, binance, settings):
    settings.BINANCE_TIMEOUT = 0.5
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order("TF2M"))
    binance.fault("timeout", method="POST", path="/fapi/v1/algoOrder", delay=1.5)
    [result] = adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.002"), client_order_id="TF2M",
                                        stop_loss=D("90000"))
    assert result.raw["clientAlgoId"] == "TF2MSL"
    assert len(binance.calls("/fapi/v1/algoOrder", "POST")) == 1
    assert [a["clientAlgoId"] for a in binance.account().algo] == ["TF2MSL"]


def test_protection_retries_a_rate_limited_placement(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order("TF2M"))
    binance.fault("429", method="POST", path="/fapi/v1/algoOrder", retry_after=1)
    [result] = adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.002"), client_order_id="TF2M",
                                        take_profit=D("99000"))
    assert result.status == "open" and len(binance.calls("/fapi/v1/algoOrder", "POST")) == 2


def test_futures_close_is_reduce_only_then_cancels_our_algo_orders(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order("TF2M"))
    adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.002"), client_order_id="TF2M",
                             stop_loss=D("90000"), take_profit=D("99000"))
    adapter.client.futures_create_algo_order(symbol="BTCUSDT", side="SELL", type="STOP_MARKET",  # customer's own
                                             triggerPrice="80000", closePosition="true", clientAlgoId="manual1")
    binance.log.clear()
    result = adapter.place_order(order("TF3C", side="sell", reduce_only=True))
    assert result.status == "filled"
    assert [(r.method, r.path) for r in binance.log] == [
        ("POST", "/fapi/v1/order"), ("GET", "/fapi/v1/openAlgoOrders"),
        ("DELETE", "/fapi/v1/algoOrder"), ("DELETE", "/fapi/v1/algoOrder")]
    assert binance.log[0].params["reduceOnly"] == "true"
    assert "BTCUSDT" not in binance.account().positions
    assert {a["clientAlgoId"]: a["algoStatus"] for a in binance.account().algo} == {
        "TF2MSL": "CANCELED", "TF2MTP": "CANCELED", "manual1": "NEW"}


def test_new_protection_replaces_our_earlier_stops_on_the_symbol(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order("TF2M"))
    adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.002"), client_order_id="TF2M",
                             stop_loss=D("90000"))
    adapter.place_order(order("TF3M"))  # adds to the position
    adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.002"), client_order_id="TF3M",
                             stop_loss=D("91000"))
    assert {a["clientAlgoId"]: a["algoStatus"] for a in binance.account().algo} == {
        "TF2MSL": "CANCELED", "TF3MSL": "NEW"}


def test_cancel_protection_after_a_close_resolved_by_lookup(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order("TF2M"))
    adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.002"), client_order_id="TF2M",
                             stop_loss=D("90000"))
    binance.fault("unknown_status", method="POST", path="/fapi/v1/order")
    with pytest.raises(BrokerAmbiguous):  # the close reached Binance, but its stop is still open
        adapter.place_order(order("TF3C", side="sell", reduce_only=True))
    assert [a["algoStatus"] for a in binance.account().algo] == ["NEW"]
    adapter.cancel_protection(symbol="BTCUSDT")
    assert [a["algoStatus"] for a in binance.account().algo] == ["CANCELED"]


def test_close_of_a_position_already_closed_by_its_stop_explains_why(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order("TF2M"))
    adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.002"), client_order_id="TF2M",
                             stop_loss=D("90000"))
    binance.set_price("BTCUSDT", "89000")  # the stop triggers on Binance
    assert "BTCUSDT" not in binance.account().positions
    with pytest.raises(BrokerRejected, match="stop or target hit") as exc:
        adapter.place_order(order("TF3C", side="sell", reduce_only=True))
    assert exc.value.code == "-2022"


def test_spot_oco_protection_then_close_frees_the_coins_first(owner, binance):
    binance.commission = D("0.001")  # the fee comes out of the bought coin: 0.000999 BTC arrives
    adapter = BinanceAdapter(binance_account(owner, binance, market="spot"))
    adapter.place_order(order("TF4M", qty="0.001"))
    [oco] = adapter.place_protection(symbol="BTCUSDT", entry_side="buy", qty=D("0.001"), client_order_id="TF4M",
                                     stop_loss=D("90000.004"), take_profit=D("99000"))
    [post] = binance.calls("/api/v3/orderList/oco", "POST")
    assert (post.params["quantity"], post.params["belowStopPrice"], post.params["abovePrice"]) == (
        "0.00099", "90000", "99000")
    assert binance.account().spot["BTC"][1] == D("0.00099")  # locked by the OCO
    result = adapter.place_order(order("TF4C", side="sell", qty="0.001", reduce_only=True))
    assert result.status == "filled" and result.filled_qty == D("0.00099")
    deletes = binance.calls("/api/v3/order", "DELETE")
    assert len(deletes) == 1 and deletes[0].status == 200  # one leg cancels the whole OCO
    assert binance.log.index(deletes[0]) < binance.log.index(binance.calls("/api/v3/order", "POST")[-1])
    assert all(o["status"] != "NEW" for o in binance.account().orders["spot"])
    assert oco.broker_order_id == str(binance.account().order_lists[0]["orderListId"])


# -- ambiguity: timeout, -1007, 5xx -------------------------------------------------------------------------------
def _reserved_order(account, client_id="TF990M") -> tuple[Order, LegPlan]:
    leg = LegPlan(leg="main", symbol="BTCUSDT", side="buy", qty=D("0.002"), extra={"leverage": 5})
    row = Order.objects.create(account=account, leg="main", client_order_id=client_id, symbol="BTCUSDT",
                               side="buy", qty=D("0.002"))
    return row, leg


@pytest.mark.parametrize("fault", [
    {"kind": "timeout", "delay": 1.5},
    {"kind": "unknown_status"},
    {"kind": "5xx_accepted", "status": 502},
    {"kind": "drop"},
])
def test_ambiguous_answer_after_acceptance_books_exactly_one_order(owner, binance, settings, fault):
    settings.BINANCE_TIMEOUT = 0.5
    account = binance_account(owner, binance)
    binance.fault(method="POST", path="/fapi/v1/order", **fault)
    row, leg = _reserved_order(account)
    result = _submit(BinanceAdapter(account), row, leg)  # the engine's path: place → ambiguous → look up
    assert (result.status, result.filled_qty) == ("filled", D("0.002"))
    order_calls = [(r.method, r.params.get("newClientOrderId", r.params.get("origClientOrderId")))
                   for r in binance.log if r.path == "/fapi/v1/order"]
    assert order_calls == [("POST", "TF990M"), ("GET", "TF990M")]  # exactly one POST, then the lookup
    assert len(binance.account().orders["futures"]) == 1
    row.refresh_from_db()
    assert row.status == Order.Status.FILLED
    assert Position.objects.get(account=account, symbol="BTCUSDT").qty == D("0.002")


def test_adapter_reports_a_timeout_after_acceptance_as_ambiguous(owner, binance, settings):
    settings.BINANCE_TIMEOUT = 0.5
    adapter = BinanceAdapter(binance_account(owner, binance))
    binance.fault("timeout", method="POST", path="/fapi/v1/order", delay=1.5)
    with pytest.raises(BrokerAmbiguous, match="may exist"):
        adapter.place_order(order("TF991M"))
    assert adapter.order_status(client_order_id="TF991M", symbol="BTCUSDT").status == "filled"


def test_5xx_before_acceptance_is_looked_up_then_resent_once(owner, binance):
    account = binance_account(owner, binance)
    adapter = BinanceAdapter(account)
    binance.fault("5xx", method="POST", path="/fapi/v1/order")
    row, leg = _reserved_order(account)
    with pytest.raises(BrokerAmbiguous):
        _submit(adapter, row, leg)  # not found by client id: the engine releases and retries later
    assert binance.calls("/fapi/v1/order", "GET")[0].status == 400  # -2013, looked up before any resend
    result = _submit(adapter, row, leg)
    assert result.status == "filled"
    assert [r.status for r in binance.calls("/fapi/v1/order", "POST")] == [503, 200]
    assert len(binance.account().orders["futures"]) == 1


# -- limits and bans ----------------------------------------------------------------------------------------------
def test_429_is_transient_with_retry_after(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    binance.fault("429", path="/fapi/v1/order", retry_after=7)
    with pytest.raises(BrokerTransient) as exc:
        adapter.place_order(order())
    assert exc.value.retry_after == 7 and exc.value.code == "-1003"
    assert binance.account().orders["futures"] == []


def test_418_blocks_every_account_until_the_ban_ends_without_sending(owner, other, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    binance.fault("ban", seconds=300)
    with pytest.raises(BrokerTransient) as exc:
        adapter.last_prices(["BTCUSDT", "ETHUSDT"])
    assert exc.value.code == "binance_ip_ban" and "IP banned by Binance until" in exc.value.message
    assert 290 < exc.value.retry_after <= 301
    sent = len(binance.log)
    key, secret = binance.add_account()
    someone_else = BinanceAdapter(binance_account(other, binance, key=key, secret=secret))
    for call in (lambda: adapter.place_order(order()), lambda: someone_else.balance()):
        with pytest.raises(BrokerTransient, match="IP banned by Binance until"):
            call()
    assert len(binance.log) == sent  # nothing more reached Binance
    assert adapter.ban_until() is not None
    spot = BinanceAdapter(binance_account(owner, binance, market="spot"))
    assert spot.last_prices(["BTCUSDT"]) == {"BTCUSDT": D("95234.5")}  # another API domain, not banned


def test_weight_overrun_answers_429_then_an_ip_ban(owner, binance):
    binance.weight_limit["futures"] = 3
    binance.ban_after_429 = 1
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.last_prices(["BTCUSDT", "ETHUSDT"])  # weight 2
    with pytest.raises(BrokerTransient) as first:
        adapter.last_prices(["BTCUSDT", "ETHUSDT"])
    assert first.value.code == "-1003" and first.value.retry_after > 0
    with pytest.raises(BrokerTransient) as second:
        adapter.last_prices(["BTCUSDT", "ETHUSDT"])
    assert second.value.code == "binance_ip_ban"
    assert [r.status for r in binance.log] == [200, 429, 418]


def test_weight_and_order_count_headers_are_tracked(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order(extra={"leverage": 3}))
    assert adapter.usage["futures"]["used_weight_1m"] == 1  # leverage 1 + order 0
    assert adapter.usage["futures"]["order_count_10s"] == 1 and adapter.usage["futures"]["order_count_1m"] == 1
    adapter.positions()
    assert adapter.used_weight("futures") == 6


def test_reads_yield_when_the_minute_budget_is_nearly_spent(owner, binance, settings):
    settings.BINANCE_WEIGHT_HEADROOM = 0.0001  # any known usage counts as "nearly spent"
    adapter = BinanceAdapter(binance_account(owner, binance))
    adapter.place_order(order(extra={"leverage": 2}))  # weight 1 reported
    sent = len(binance.log)
    with pytest.raises(BrokerTransient, match="deferring reads") as exc:
        adapter.last_prices(["BTCUSDT", "ETHUSDT"])
    assert exc.value.code == "weight_budget" and len(binance.log) == sent


def test_clock_drift_is_resynced_and_the_request_repeated(owner, binance):
    binance.clock_offset_ms = -15000  # Binance 15 s behind us: our timestamps look like the future
    adapter = BinanceAdapter(binance_account(owner, binance))
    assert adapter.balance().cash == D("10000")
    assert [(r.path, r.code) for r in binance.log] == [
        ("/fapi/v3/balance", -1021), ("/fapi/v1/time", None), ("/fapi/v3/balance", None)]
    adapter.positions()  # the offset is remembered: no new -1021
    assert binance.log[-1].code is None


# -- reads -----------------------------------------------------------------------------------------------------------
def test_many_prices_in_one_ticker_request(owner, binance):
    futures = BinanceAdapter(binance_account(owner, binance))
    spot = BinanceAdapter(binance_account(owner, binance, market="spot"))
    binance.set_price("ETHUSDT", "3500.5")
    expected = {"BTCUSDT": D("95234.5"), "ETHUSDT": D("3500.5"), "SOLUSDT": D("187.45")}
    assert futures.last_prices(["BTCUSDT", "ETHUSDT", "SOLUSDT"]) == expected
    assert spot.last_prices(["SOLUSDT", "BTCUSDT", "ETHUSDT", "BTCUSDT"]) == expected
    assert [r.path for r in binance.log] == ["/fapi/v2/ticker/price", "/api/v3/ticker/price"]
    assert binance.log[1].params["symbols"] == '["BTCUSDT","ETHUSDT","SOLUSDT"]'


def test_spot_prices_fall_back_to_all_tickers_when_one_symbol_is_unknown(owner, binance):
    spot = BinanceAdapter(binance_account(owner, binance, market="spot"))
    assert spot.last_prices(["BTCUSDT", "NOPEUSDT"]) == {"BTCUSDT": D("95234.5")}
    assert [(r.path, r.status) for r in binance.log] == [("/api/v3/ticker/price", 400), ("/api/v3/ticker/price", 200)]


def test_positions_and_balance(owner, binance):
    futures = BinanceAdapter(binance_account(owner, binance))
    futures.place_order(order(extra={"leverage": 10}))
    binance.set_price("BTCUSDT", "96234.5", market="futures")
    [position] = futures.positions()
    assert (position.symbol, position.qty, position.avg_price, position.last_price) == (
        "BTCUSDT", D("0.002"), D("95234.5"), D("96234.5"))
    assert futures.balance().equity == D("10002")
    spot = BinanceAdapter(binance_account(owner, binance, market="spot"))
    spot.place_order(order("TF6M", qty="0.01"))  # at 95234.5
    binance.set_price("BTCUSDT", "96234.5", market="spot")
    balance = spot.balance()
    assert (balance.cash, balance.equity) == (D("10000") - D("952.345"), D("10010"))
    assert [(p.symbol, p.qty) for p in spot.positions()] == [("BTCUSDT", D("0.01"))]


def test_requests_never_leave_loopback(owner, binance):
    adapter = BinanceAdapter(binance_account(owner, binance))
    for url in (adapter.client.API_URL, adapter.client.FUTURES_URL, adapter.client.MARGIN_API_URL):
        assert url.startswith("http://127.0.0.1:")


def test_the_sdk_session_takes_the_ca_bundle_once_and_rereads_the_environment_only_for_a_proxy(owner, binance,
                                                                                                monkeypatch):
    """requests re-reads proxy and CA variables on every call (0.6 ms each); without a proxy they are read once,
    and the CA bundle the environment names still verifies TLS, as it did."""
    from brokers.adapters import binance as module

    monkeypatch.setattr(module, "ENV_PROXIES", False)
    monkeypatch.setattr(module, "ENV_CA_BUNDLE", "/etc/ssl/company-ca.pem")
    session = BinanceAdapter(binance_account(owner, binance)).client.session
    assert (session.trust_env, session.verify) == (False, "/etc/ssl/company-ca.pem")
    BinanceAdapter(binance_account(owner, binance)).balance()  # and it still reaches Binance (loopback here)
    monkeypatch.setattr(module, "ENV_PROXIES", True)  # an HTTPS_PROXY: requests keeps honouring the environment
    session = BinanceAdapter(binance_account(owner, binance)).client.session
    assert (session.trust_env, session.verify) == (True, True)
