"""unify.v1 signals on a live Binance account, end to end: webhook → engine → the real ``binance.Client`` → the
local Binance (``tests/protocol/binance_server.py``), which verifies signatures and enforces the exchange filters.

Assertions are on what went over the wire: which endpoints, in which order, with which parameters, how often.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from brokers.models import BrokerAccount, Execution, Order, Position
from brokers.services import account_create
from brokers.tasks import execution_run_task
from tests.protocol.binance_server import BinanceServer

pytestmark = pytest.mark.slow
D = Decimal
ORDER = "/fapi/v1/order"
ALGO = "/fapi/v1/algoOrder"


@pytest.fixture
def binance(binance, settings):  # the conftest server, with live accounts allowed to trade
    settings.LIVE_TRADING_ENABLED = True
    return binance


@pytest.fixture(autouse=True)
def eager_retries():
    """Let the task's retries play out in eager mode, as a worker would run them (minus the countdowns)."""
    conf = execution_run_task.app.conf
    propagates = conf.task_eager_propagates
    conf.task_eager_propagates = False
    yield
    conf.task_eager_propagates = propagates


def connect(owner, server: BinanceServer, market: str = "futures", **options) -> tuple[BrokerAccount, str]:
    account, key = account_create(owner=owner, label=f"Binance {market}", broker="binance", mode="live",
                                  currency="USDT", api_key=server.api_key, api_secret=server.api_secret,
                                  options={"market": market, **options})
    return account, key.raw


@pytest.fixture
def futures(owner, binance) -> tuple[BrokerAccount, str]:
    return connect(owner, binance, leverage=5)


@pytest.fixture
def send(client, django_capture_on_commit_callbacks):
    def _send(key: str, side: str, symbol: str = "BTCUSDT", **intent) -> Execution:
        body = {"version": "unify.v1", "intent": {"side": side, "symbol": symbol, **intent}}
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(f"/api/v1/webhooks/{key}", data=json.dumps(body), content_type="text/plain")
        assert response.status_code == 202, response.content
        return Execution.objects.get(signal_id=response.json()["signal_id"])
    return _send


def wire(server: BinanceServer) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in server.log]


def position(account) -> Position:
    return Position.objects.get(account=account, symbol="BTCUSDT", status=Position.Status.OPEN)


# --- futures ---------------------------------------------------------------------------------------------------

def test_futures_buy_sets_leverage_then_orders_then_places_sl_tp_as_algo_orders(binance, futures, send):
    account, key = futures

    execution = send(key, "buy", qty="0.002", sl={"mode": "pct", "value": "1"}, tp={"mode": "pct", "value": "2"})

    assert (execution.status, execution.reason_code) == ("filled", ""), execution.reason
    calls = wire(binance)
    assert calls.index(("POST", "/fapi/v1/leverage")) < calls.index(("POST", ORDER))
    assert calls[-2:] == [("POST", ALGO), ("POST", ALGO)]
    order = Order.objects.get(execution=execution)
    [post] = binance.calls(ORDER, "POST")
    assert (post.params["type"], post.params["side"], post.params["quantity"]) == ("MARKET", "BUY", "0.002")
    assert post.params["newClientOrderId"] == order.client_order_id
    assert binance.calls("/fapi/v1/leverage")[0].params["leverage"] == "5"
    # Entry 95234.5: stop 1 % below = 94282.155, target 2 % above = 97139.19, on Binance's 0.10 tick.
    stop, target = binance.calls(ALGO, "POST")
    assert (stop.params["type"], stop.params["triggerPrice"], stop.params["side"]) == (
        "STOP_MARKET", "94282.2", "SELL")
    assert (target.params["type"], target.params["triggerPrice"]) == ("TAKE_PROFIT_MARKET", "97139.2")
    assert stop.params["clientAlgoId"].startswith(order.client_order_id)
    held = position(account)
    assert (held.side, held.qty, held.avg_price) == ("long", D("0.002"), D("95234.5"))
    assert (held.stop_loss, held.take_profit) == (D("94282.2"), D("97139.2"))
    assert binance.account().positions["BTCUSDT"][0] == D("0.002")


def test_futures_close_is_a_reduce_only_market_order_and_cancels_the_stops(binance, futures, send):
    account, key = futures
    send(key, "buy", qty="0.002", price="95234.5", sl={"mode": "pct", "value": "1"}, tp={"mode": "pct", "value": "2"})
    binance.set_price("BTCUSDT", "96234.5")
    binance.log.clear()

    execution = send(key, "close")

    assert execution.status == Execution.Status.FILLED, execution.reason
    assert wire(binance) == [("POST", ORDER), ("GET", "/fapi/v1/openAlgoOrders"), ("DELETE", ALGO), ("DELETE", ALGO)]
    [post] = binance.calls(ORDER, "POST")
    assert (post.params["side"], post.params["quantity"], post.params["reduceOnly"]) == ("SELL", "0.002", "true")
    assert [a["algoStatus"] for a in binance.account().algo] == ["CANCELED", "CANCELED"]
    closed = Position.objects.get(account=account, symbol="BTCUSDT")
    assert (closed.status, closed.realized_pnl) == ("closed", D("2.000"))
    assert "BTCUSDT" not in binance.account().positions


def test_quantity_is_rounded_down_to_the_step(binance, futures, send):
    execution = send(futures[1], "buy", qty="0.0029", price="95234.5")

    assert execution.status == Execution.Status.FILLED, execution.reason
    [post] = binance.calls(ORDER, "POST")
    assert post.params["quantity"] == "0.002"
    assert Order.objects.get(execution=execution).qty == D("0.002")


def test_an_order_under_the_minimum_notional_is_rejected_with_the_numbers_and_not_sent(binance, futures, send):
    execution = send(futures[1], "buy", qty="0.001", price="95234.5")

    assert (execution.status, execution.reason_code) == ("rejected", "below_min_notional")
    assert execution.reason == ("0.001 BTC × 95234.5 = 95.23 USDT is under Binance's minimum notional of 100 USDT "
                                "for BTCUSDT. Increase the size.")
    assert [r.path for r in binance.log] == ["/fapi/v1/exchangeInfo"]  # read the rules; sent nothing
    assert not Order.objects.exists()


def test_an_unknown_execution_status_is_looked_up_and_leaves_one_order(binance, futures, send):
    account, key = futures
    binance.fault("unknown_status", method="POST", path=ORDER)  # -1007 after Binance took the order

    execution = send(key, "buy", qty="0.002", price="95234.5")

    assert execution.status == Execution.Status.FILLED, execution.reason
    cid = Order.objects.get(execution=execution).client_order_id
    assert [(r.method, r.params.get("newClientOrderId") or r.params.get("origClientOrderId"), r.code)
            for r in binance.calls(ORDER)] == [("POST", cid, -1007), ("GET", cid, None)]
    assert len(binance.account().orders["futures"]) == 1
    assert position(account).qty == D("0.002")


def test_a_rate_limited_order_is_retried_by_the_task(binance, futures, send):
    account, key = futures
    binance.fault("429", method="POST", path=ORDER, retry_after=1)

    execution = send(key, "buy", qty="0.002", price="95234.5")

    execution.refresh_from_db()
    assert execution.status == Execution.Status.FILLED, execution.reason
    assert execution.attempts == 2
    assert [r.status for r in binance.calls(ORDER, "POST")] == [429, 200]
    assert len(binance.account().orders["futures"]) == 1
    assert position(account).qty == D("0.002")


def test_a_refused_stop_keeps_the_fill_and_says_the_position_is_unprotected(binance, futures, send):
    account, key = futures

    execution = send(key, "buy", qty="0.002", price="95234.5", sl={"mode": "price", "value": "96000"})

    assert (execution.status, execution.reason_code) == ("filled", "unprotected")
    assert "stop loss / take profit was refused: Order would immediately trigger" in execution.reason
    assert "without them: set them there or close the position" in execution.reason
    assert position(account).qty == D("0.002")
    assert binance.account().algo == []


def test_a_close_found_by_lookup_after_an_unknown_status_still_cancels_the_stops(binance, futures, send):
    account, key = futures
    send(key, "buy", qty="0.002", price="95234.5", sl={"mode": "pct", "value": "1"})
    binance.fault("unknown_status", method="POST", path=ORDER)

    execution = send(key, "close")

    assert execution.status == Execution.Status.FILLED, execution.reason
    assert [r.code for r in binance.calls(ORDER, "POST")] == [None, -1007]  # the entry, then the close: no resend
    assert [a["algoStatus"] for a in binance.account().algo] == ["CANCELED"]
    assert Position.objects.get(account=account, symbol="BTCUSDT").status == "closed"


def test_protection_is_placed_once_however_often_the_execution_runs(binance, futures, send):
    from brokers.services.execution import execution_run

    account, key = futures
    binance.fault("429", method="POST", path=ALGO, times=3, retry_after=1)  # every attempt of the first run

    execution = send(key, "buy", qty="0.002", price="95234.5", sl={"mode": "pct", "value": "1"},
                     tp={"mode": "pct", "value": "2"})
    execution.refresh_from_db()
    assert (execution.status, execution.attempts) == ("filled", 2), execution.reason
    Execution.objects.filter(pk=execution.pk).update(status=Execution.Status.RUNNING,
                                                     lease_until=timezone.now() - timedelta(seconds=1))
    execution = execution_run(execution_id=execution.pk)  # a redelivered message after a lost worker

    assert (execution.status, execution.attempts) == ("filled", 3)
    assert len(binance.calls(ORDER, "POST")) == 1
    assert sorted((a["clientAlgoId"][-2:], a["algoStatus"]) for a in binance.account().algo) == [
        ("SL", "NEW"), ("TP", "NEW")]


def test_a_stop_that_cannot_be_placed_after_retries_keeps_the_fill_and_warns(binance, futures, send):
    account, key = futures
    binance.fault("429", method="POST", path=ALGO, times=1000, retry_after=1)

    execution = send(key, "buy", qty="0.002", price="95234.5", sl={"mode": "pct", "value": "1"})

    execution.refresh_from_db()
    assert (execution.status, execution.reason_code) == ("filled", "unprotected")
    assert "stop loss / take profit was not placed after retries (Binance rate limit" in execution.reason
    assert len(binance.calls(ORDER, "POST")) == 1
    assert position(account).stop_loss == D("94282.2")


def test_an_options_alert_to_a_binance_account_is_rejected_and_not_sent(binance, futures, client,
                                                                       django_capture_on_commit_callbacks):
    body = {"signal": "S1", "strike": 25000, "type": "PE", "action": "ENTRY"}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/webhooks/{futures[1]}", data=json.dumps(body), content_type="text/plain")
    execution = Execution.objects.get(signal_id=response.json()["signal_id"])

    assert (execution.status, execution.reason_code) == ("rejected", "unsupported_format")
    assert "send it to a Zerodha Kite or a paper account" in execution.reason
    assert binance.log == []


# --- spot ------------------------------------------------------------------------------------------------------

def test_spot_market_buy(owner, binance, send):
    account, key = connect(owner, binance, market="spot")

    execution = send(key, "buy", qty="0.001")

    assert execution.status == Execution.Status.FILLED, execution.reason
    [post] = binance.calls("/api/v3/order", "POST")
    assert (post.params["type"], post.params["side"], post.params["quantity"]) == ("MARKET", "BUY", "0.001")
    assert post.params["newClientOrderId"] == Order.objects.get(execution=execution).client_order_id
    assert not binance.calls("/fapi/v1/leverage") and not binance.calls(ORDER)
    assert (position(account).qty, position(account).avg_price) == (D("0.001"), D("95234.5"))
    assert binance.account().spot["BTC"][0] == D("0.001")
