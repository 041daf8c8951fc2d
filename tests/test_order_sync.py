"""Orders left open at the broker are followed until they end (``brokers/services/order_sync.py``), against the
local Kite Connect server: the real ``kiteconnect`` client, orders the simulated exchange fills (or cancels) after
the engine stopped waiting.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.utils import timezone

from brokers.models import Execution, Order, Position
from brokers.services import execution_create_for_signal, execution_run
from brokers.services.order_sync import orders_sync
from brokers.tasks import instruments_sync_task, orders_sync_task
from tests import factories
from tests.protocol.kite_server import KiteServer
from webhooks.formats import parse_account_payload
from webhooks.models import Signal

pytestmark = pytest.mark.slow
D = Decimal
IST = ZoneInfo("Asia/Kolkata")


@pytest.fixture
def kite(settings):
    with time_machine.travel(datetime(2025, 12, 24, 10, tzinfo=IST), tick=True), KiteServer() as server:
        settings.KITE_API_ROOT = server.url
        settings.KITE_FILL_WAIT = 0.2
        settings.LIVE_TRADING_ENABLED = True
        yield server


@pytest.fixture
def zerodha(owner, kite):
    prefs = owner.trading_settings
    prefs.hedge_pct, prefs.hedge_strike_offset = D("0"), 200
    prefs.save()
    account = factories.kite_account(owner=owner, access_token=kite.grant_access_token())
    assert instruments_sync_task() is not None
    return account


def contract(server: KiteServer, strike: int) -> dict:
    return next(r for r in server.instruments if r["name"] == "NIFTY" and r["expiry"] == "2025-12-30"
                and r["strike"] == strike and r["instrument_type"] == "PE")


def enter(account, lots: int = 2) -> Execution:
    payload = {"signal": "S1", "strike": 25000, "type": "PE", "action": "ENTRY", "lots": lots}
    return run_signal(account, payload)


def run_signal(account, payload: dict) -> Execution:
    intent = parse_account_payload(json.loads(json.dumps(payload)), account_broker=account.broker)
    signal = Signal.objects.create(account=account, format=intent["format"], body_hash=uuid.uuid4().hex,
                                   payload=payload, intent=intent, received_at=timezone.now())
    execution = execution_create_for_signal(signal=signal, account=account)
    execution_run(execution_id=execution.pk)
    execution.refresh_from_db()
    return execution


def wait_for_fills(server: KiteServer) -> None:
    deadline = time.monotonic() + 5
    while any(o["_fill_at"] and o["status"] == "OPEN" for o in server.orders) and time.monotonic() < deadline:
        time.sleep(0.05)
        with server._lock:
            server._settle()


def test_an_order_the_exchange_fills_later_is_booked_once(kite, zerodha):
    kite.fill_delay = 0.8  # the exchange fills it after the engine's 0.2 s wait
    main = contract(kite, 25000)
    kite.set_ltp(f"NFO:{main['tradingsymbol']}", "110.5")

    execution = enter(zerodha)

    assert execution.status == Execution.Status.PLACED, execution.reason
    order = Order.objects.get(execution=execution)
    assert order.status == Order.Status.OPEN
    assert not Position.objects.filter(account=zerodha).exists()
    assert orders_sync().filled == []  # still working at the exchange

    wait_for_fills(kite)
    first, second = orders_sync_task(), orders_sync_task()

    assert (first["filled"], first["settled"]) == ([order.pk], [execution.pk])
    assert (second["checked"], second["filled"]) == (0, [])
    assert orders_sync().filled == []  # a third, direct run finds nothing open either
    order.refresh_from_db()
    assert (order.status, order.filled_qty, order.avg_price) == ("filled", D("150"), D("110.5"))
    [position] = Position.objects.filter(account=zerodha)
    assert (position.side, position.qty, position.avg_price) == ("short", D("150"), D("110.5"))
    # Booked with the entry's plan: the strike stop and the breakeven are there as for an immediate fill.
    assert (position.meta["spot_stop"], position.meta["role"], position.breakeven) == ("25000", "main", D("24889.5"))
    execution.refresh_from_db()
    assert (execution.status, execution.reason) == ("filled", "Filled at the broker after resting open")
    assert len(kite.order_posts()) == 1


def test_an_order_cancelled_at_the_exchange_fails_the_execution_with_the_reason(kite, zerodha):
    kite.hold_orders = True
    execution = enter(zerodha)
    assert execution.status == Execution.Status.PLACED
    [resting] = kite.orders
    kite._cancel(resting["order_id"])  # cancelled at Kite (the trader's app, or the exchange at day end)

    result = orders_sync()

    order = Order.objects.get(execution=execution)
    assert (result.ended, order.status) == ([order.pk], "cancelled")
    execution.refresh_from_db()
    assert (execution.status, execution.reason_code) == ("failed", "order_cancelled")
    assert execution.reason == (f"Main order (sell 150 NFO:{contract(kite, 25000)['tradingsymbol']}) was cancelled "
                                "at the broker without a fill")
    assert not Position.objects.filter(account=zerodha).exists()


def test_an_order_rejected_after_resting_records_the_brokers_reason(kite, zerodha):
    kite.hold_orders = True
    execution = enter(zerodha)
    with kite._lock:
        kite._transition(kite.orders[0], "REJECTED", message="Margin exceeds available funds")

    orders_sync()

    assert Order.objects.get(execution=execution).status == Order.Status.REJECTED
    execution.refresh_from_db()
    assert (execution.status, execution.reason_code) == ("failed", "order_rejected")
    assert execution.reason.endswith("was rejected by the broker: Margin exceeds available funds")


def test_an_exit_whose_main_leg_filled_later_then_sells_the_hedge(kite, zerodha, owner,
                                                                   django_capture_on_commit_callbacks):
    owner.trading_settings.hedge_pct = D("50")
    owner.trading_settings.save()
    main, hedge = contract(kite, 25000), contract(kite, 24800)
    assert enter(zerodha, lots=2).status == Execution.Status.FILLED
    kite.fill_delay = 0.8
    exit_ = run_signal(zerodha, {"signal": "S1", "strike": 25000, "type": "PE", "action": "EXIT"})
    assert (exit_.status, exit_.reason_code) == ("placed", "exit_open")
    assert len(Position.objects.filter(account=zerodha, status="open")) == 2  # the hedge is kept meanwhile

    wait_for_fills(kite)
    kite.fill_delay = 0
    with django_capture_on_commit_callbacks(execute=True):
        result = orders_sync()

    assert result.settled == [exit_.pk]
    exit_.refresh_from_db()
    assert exit_.status == Execution.Status.FILLED and "the hedge kept until then is sold" in exit_.reason
    sell = Execution.objects.get(kind=Execution.Kind.CLOSE)
    assert sell.status == Execution.Status.FILLED and sell.reason.startswith(
        f"NFO:{hedge['tradingsymbol']} sold after the main leg's exit filled")
    posts = [(p.one("transaction_type"), p.one("tradingsymbol")) for p in kite.order_posts()]
    assert posts[-2:] == [("BUY", main["tradingsymbol"]), ("SELL", hedge["tradingsymbol"])]
    assert not Position.objects.filter(account=zerodha, status="open").exists()


def test_an_order_still_open_after_the_trading_day_is_no_longer_followed(kite, zerodha, settings):
    kite.hold_orders = True
    execution = enter(zerodha)
    assert orders_sync().ended == []

    with time_machine.travel(timezone.now() + timedelta(hours=settings.ORDER_SYNC_MAX_AGE_HOURS, minutes=5)):
        result = orders_sync()

    order = Order.objects.get(execution=execution)
    assert (result.ended, order.status) == ([order.pk], "failed")
    execution.refresh_from_db()
    assert (execution.status, execution.reason_code) == ("failed", "order_unfollowed")
    assert "TradeFlow stopped following it" in execution.reason and order.client_order_id in execution.reason
    checked = len(kite.requests_to("/orders"))
    assert orders_sync().checked == 0 and len(kite.requests_to("/orders")) == checked


def test_paper_accounts_are_never_asked(paper):
    assert orders_sync().checked == 0
