"""The stop watcher (``brokers/services/watch.py``) and the breakeven of option legs.

Pure decisions are property-tested; the watcher runs against the paper broker, the local Kite Connect server
(spot from the index's ``/quote/ltp``) and the local Binance (exchange-side stops, reconciled).
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from brokers.adapters.paper import quote_set
from brokers.models import Execution, Order, Position, Quote
from brokers.services import execution_create_for_signal, execution_run
from brokers.services.breakeven import option_breakeven, option_net_credit
from brokers.services.watch import (
    broker_flat,
    spot_stop_triggered,
    stop_triggered,
    stops_watch,
)
from brokers.tasks import stops_watch_task
from tests import factories
from tests.concurrency import run_at_once
from webhooks.formats import parse_account_payload
from webhooks.models import Signal

D = Decimal
prices = st.decimals(min_value=D("0.01"), max_value=D("100000"), places=2)
sides = st.sampled_from(["long", "short"])


# --- pure decisions ---------------------------------------------------------------------------------------------

@given(sides, prices, prices)
def test_a_stop_loss_triggers_exactly_when_the_price_reaches_it_against_the_position(side, level, price):
    against = price <= level if side == "long" else price >= level
    assert stop_triggered(side, "stop_loss", level, price) is against


@given(sides, prices, prices)
def test_a_take_profit_is_the_mirror_of_a_stop_loss_of_the_other_side(side, level, price):
    other = "short" if side == "long" else "long"
    assert stop_triggered(side, "take_profit", level, price) is stop_triggered(other, "stop_loss", level, price)
    # At the level itself both fire: a touch counts.
    assert stop_triggered(side, "take_profit", level, level) and stop_triggered(side, "stop_loss", level, level)


@given(prices, prices)
def test_short_put_stops_at_or_below_the_strike_and_short_call_at_or_above(strike, spot):
    assert spot_stop_triggered("PE", strike, spot) is (spot <= strike)
    assert spot_stop_triggered("CE", strike, spot) is (spot >= strike)


def test_unknown_stop_kind_is_refused():
    with pytest.raises(ValueError):
        stop_triggered("long", "trailing", D("1"), D("1"))


@pytest.mark.parametrize(("side", "qty", "broker_qty", "flat"), [
    ("long", "1", "0", True), ("long", "1", "1", False), ("long", "1", "-1", True), ("long", "1", "0.005", True),
    ("short", "2", "-2", False), ("short", "2", "0", True), ("short", "2", "2", True), ("long", "1", "0.5", False),
])
def test_broker_flat_means_nothing_the_other_side_or_dust(side, qty, broker_qty, flat):
    assert broker_flat(side, D(qty), D(broker_qty)) is flat


@given(prices, st.decimals(min_value=D("0.05"), max_value=D("500"), places=2),
       st.decimals(min_value=D("0"), max_value=D("500"), places=2), st.integers(1, 40), st.integers(0, 40))
def test_breakeven_is_the_strike_moved_by_the_net_credit_towards_the_loss(strike, main, hedge, lots, hedge_lots):
    main_qty, hedge_qty = D(lots * 65), D(hedge_lots * 65)
    credit = option_net_credit(main_price=main, main_qty=main_qty, hedge_price=hedge, hedge_qty=hedge_qty)
    assert credit == main - hedge * hedge_qty / main_qty
    put = option_breakeven(option_type="PE", strike=strike, main_price=main, main_qty=main_qty, hedge_price=hedge,
                           hedge_qty=hedge_qty)
    call = option_breakeven(option_type="CE", strike=strike, main_price=main, main_qty=main_qty, hedge_price=hedge,
                            hedge_qty=hedge_qty)
    assert (put, call) == (strike - credit, strike + credit)
    # Without a hedge the whole premium is kept.
    assert option_breakeven(option_type="PE", strike=strike, main_price=main, main_qty=main_qty) == strike - main


# --- helpers ----------------------------------------------------------------------------------------------------

def signal_execution(account, payload: dict) -> Execution:
    intent = parse_account_payload(json.loads(json.dumps(payload)), account_broker=account.broker)
    signal = Signal.objects.create(account=account, format=intent["format"], body_hash=uuid.uuid4().hex,
                                   payload=payload, intent=intent, received_at=timezone.now())
    return execution_create_for_signal(signal=signal, account=account)


def run(execution: Execution) -> Execution:
    execution_run(execution_id=execution.pk)
    execution.refresh_from_db()
    return execution


def unify(side: str, **intent) -> dict:
    return {"version": "unify.v1", "intent": {"side": side, "symbol": "BTCUSDT", **intent}}


def options(action: str = "ENTRY", strike: int = 25000, type_: str = "PE", **extra) -> dict:
    return {"signal": "S1", "strike": strike, "type": type_, "action": action, **extra}


def closes(account) -> list[Execution]:
    return list(Execution.objects.filter(account=account, kind=Execution.Kind.CLOSE).order_by("id"))


@pytest.fixture
def account(paper):
    return paper[0]


@pytest.fixture
def hedged(owner):
    prefs = owner.trading_settings
    prefs.hedge_pct, prefs.hedge_strike_offset = D("30"), 200
    prefs.save()
    return prefs


def long_btc(account, *, sl="95", tp="110") -> Position:
    execution = run(signal_execution(account, unify("buy", qty="2", price="100", sl={"mode": "price", "value": sl},
                                                   tp={"mode": "price", "value": tp})))
    assert execution.status == Execution.Status.FILLED, execution.reason
    return Position.objects.get(account=account, symbol="BTCUSDT", status=Position.Status.OPEN)


# --- price stops on the paper broker --------------------------------------------------------------------------

def test_stop_loss_hit_closes_the_position_once_even_when_the_watcher_runs_twice(
        account, django_capture_on_commit_callbacks):
    position = long_btc(account)
    quote_set(broker="paper", symbol="BTCUSDT", price=D("94.5"))

    with django_capture_on_commit_callbacks(execute=False) as queued:
        first = stops_watch_task()
        second = stops_watch_task()  # the close is still queued: nothing new
    assert len(first["closes"]) == 1 and second["closes"] == []
    for callback in queued:
        callback()
    with django_capture_on_commit_callbacks(execute=True):
        assert stops_watch_task()["closes"] == []  # closed now: nothing to watch

    [close] = closes(account)
    assert (close.status, close.reason_code) == (Execution.Status.FILLED, "stop_loss")
    assert close.reason == "Stop loss hit at 94.5 (stop 95)"
    order = Order.objects.get(execution=close)
    assert (order.side, order.qty, order.avg_price) == ("sell", D("2"), D("94.5"))
    position.refresh_from_db()
    assert (position.status, position.realized_pnl) == ("closed", D("-11"))


@pytest.mark.parametrize(("side", "tp", "price"), [("buy", "110", "110"), ("sell", "90", "89.5")])
def test_take_profit_hit_closes_long_and_short(account, django_capture_on_commit_callbacks, side, tp, price):
    stop = "95" if side == "buy" else "105"
    run(signal_execution(account, unify(side, qty="1", price="100", sl={"mode": "price", "value": stop},
                                        tp={"mode": "price", "value": tp})))
    quote_set(broker="paper", symbol="BTCUSDT", price=D(price))

    with django_capture_on_commit_callbacks(execute=True):
        stops_watch_task()

    [close] = closes(account)
    assert close.reason == f"Take profit hit at {price} (target {tp})"
    assert close.reason_code == "take_profit" and close.status == Execution.Status.FILLED
    assert not Position.objects.filter(account=account, status=Position.Status.OPEN).exists()


def test_price_on_the_safe_side_only_marks_the_position(account, django_capture_on_commit_callbacks):
    position = long_btc(account)
    quote_set(broker="paper", symbol="BTCUSDT", price=D("95.01"))

    with django_capture_on_commit_callbacks(execute=True):
        result = stops_watch()

    assert (result.checked, result.closes) == (1, [])
    assert closes(account) == []
    position.refresh_from_db()
    assert (position.status, position.last_price) == ("open", D("95.01"))


def test_a_failed_stop_close_is_not_retried_every_tick(account, django_capture_on_commit_callbacks, monkeypatch,
                                                       settings):
    long_btc(account)
    quote_set(broker="paper", symbol="BTCUSDT", price=D("90"))
    from brokers.adapters.base import BrokerRejected
    from brokers.adapters.paper import PaperAdapter

    def refuse(self, request):
        raise BrokerRejected("Market closed", code="closed")

    monkeypatch.setattr(PaperAdapter, "place_order", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        stops_watch()
        stops_watch()
    [failed] = closes(account)
    assert failed.status == Execution.Status.FAILED
    assert failed.reason == "Stop loss hit at 90 (stop 95). Close order (sell 2 BTCUSDT) failed: Market closed"

    settings.STOP_RETRY_SECONDS = 0  # the pause is over: the watcher tries again
    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=True):
        stops_watch()
    assert [c.status for c in closes(account)] == [Execution.Status.FAILED, Execution.Status.FILLED]


def test_disabled_and_live_switched_off_accounts_are_not_closed(owner, account, settings,
                                                               django_capture_on_commit_callbacks):
    long_btc(account)
    quote_set(broker="paper", symbol="BTCUSDT", price=D("90"))
    account.enabled = False
    account.save()
    live = factories.kite_account(owner=owner, access_token="token")
    Position.objects.create(account=live, symbol="NFO:NIFTY25D3025000PE", side="short", qty=75, avg_price=100,
                            stop_loss=D("150"))
    settings.LIVE_TRADING_ENABLED = False

    with django_capture_on_commit_callbacks(execute=True):
        result = stops_watch()

    assert (result.checked, result.closes) == (1, [])  # only the live one is looked at, and it is skipped
    assert result.skipped == [f"{live.pk}: live trading is switched off"]
    assert not Execution.objects.filter(kind=Execution.Kind.CLOSE).exists()


def test_a_manual_close_while_the_stop_close_is_queued_returns_the_same_execution(
        account, owner, django_capture_on_commit_callbacks):
    from brokers.services import position_close

    position = long_btc(account)
    quote_set(broker="paper", symbol="BTCUSDT", price=D("90"))
    with django_capture_on_commit_callbacks(execute=False):
        [pending] = stops_watch().closes
        assert position_close(position=position, actor=owner).pk == pending
    assert len(closes(account)) == 1


@pytest.mark.pg
@pytest.mark.django_db(transaction=True)
def test_two_watchers_at_the_same_moment_close_a_position_once(owner):
    account, _ = factories.paper_account(owner=owner)
    position = long_btc(account)
    quote_set(broker="paper", symbol="BTCUSDT", price=D("94"))
    _, errors = run_at_once([stops_watch, stops_watch])

    assert errors == []
    [close] = closes(account)
    assert close.status == Execution.Status.FILLED
    assert Order.objects.filter(account=account, leg="close").count() == 1
    position.refresh_from_db()
    assert (position.status, position.realized_pnl) == ("closed", D("-12"))


# --- options: breakeven and the strike stop on paper --------------------------------------------------------------

def test_a_filled_options_entry_records_the_breakeven_net_of_the_hedge(account, hedged):
    quote_set(broker="paper", symbol="NIFTY 25000 PE", price=D("120"))
    quote_set(broker="paper", symbol="NIFTY 24800 PE", price=D("45"))

    assert run(signal_execution(account, options(lots=10, spot_price=24481))).status == Execution.Status.FILLED

    main = Position.objects.get(account=account, symbol="NIFTY 25000 PE")
    # 650 sold at 120, 195 bought at 45: net credit 120 − 45 × 195 ÷ 650 = 106.5 per unit.
    assert (main.meta["net_credit"], main.meta["breakeven"], main.breakeven) == ("106.5", "24893.5", D("24893.5"))
    assert "breakeven" not in Position.objects.get(account=account, symbol="NIFTY 24800 PE").meta


def test_a_call_entry_without_hedge_breaks_even_at_strike_plus_premium(account, owner):
    owner.trading_settings.hedge_pct = D("0")
    owner.trading_settings.save()
    quote_set(broker="paper", symbol="NIFTY 25000 CE", price=D("80.25"))
    run(signal_execution(account, options(type_="CE", lots=2, spot_price=24900)))
    assert Position.objects.get(account=account, symbol="NIFTY 25000 CE").breakeven == D("25080.25")


@pytest.mark.parametrize(("type_", "safe", "hit", "where"), [("PE", "25010", "25000", "at or below"),
                                                             ("CE", "24990", "25000.5", "at or above")])
def test_spot_reaching_the_strike_closes_main_then_hedge(account, hedged, django_capture_on_commit_callbacks,
                                                         type_, safe, hit, where):
    hedge_symbol = "NIFTY 24800 PE" if type_ == "PE" else "NIFTY 25200 CE"
    quote_set(broker="paper", symbol=f"NIFTY 25000 {type_}", price=D("120"))
    quote_set(broker="paper", symbol=hedge_symbol, price=D("45"))
    run(signal_execution(account, options(type_=type_, lots=10, spot_price=25000)))

    with django_capture_on_commit_callbacks(execute=True):
        assert stops_watch().closes == []  # no quote for the underlying: nothing to compare
        quote_set(broker="paper", symbol="NIFTY", price=D(safe))
        assert stops_watch().closes == []
        quote_set(broker="paper", symbol="NIFTY", price=D(hit))
        [started] = stops_watch().closes

    close = Execution.objects.get(pk=started)
    assert close.status == Execution.Status.FILLED, close.reason
    assert close.reason == f"Stop loss hit: NIFTY spot {hit} {where} the 25000 {type_} strike"
    assert close.intent["format"] == "options" and close.reason_code == "spot_stop"
    legs = list(Order.objects.filter(execution=close).order_by("id").values_list("leg", "side", "symbol"))
    assert legs == [("exit_main", "buy", f"NIFTY 25000 {type_}"), ("exit_hedge", "sell", hedge_symbol)]
    assert not Position.objects.filter(account=account, status=Position.Status.OPEN).exists()


# --- Kite: the spot is the index's LTP ---------------------------------------------------------------------------

@pytest.mark.slow
def test_kite_spot_stop_reads_the_index_ltp_in_the_same_call_and_exits_main_first(
        owner, settings, hedged, django_capture_on_commit_callbacks):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    import time_machine

    from brokers.tasks import instruments_sync_task
    from tests.protocol.kite_server import KiteServer

    ist = ZoneInfo("Asia/Kolkata")
    with time_machine.travel(datetime(2025, 12, 24, 10, tzinfo=ist), tick=True), KiteServer() as kite:
        settings.KITE_API_ROOT, settings.KITE_FILL_WAIT, settings.LIVE_TRADING_ENABLED = kite.url, 1.0, True
        account = factories.kite_account(owner=owner, access_token=kite.grant_access_token())
        instruments_sync_task()
        main, hedge = (next(r for r in kite.instruments if r["name"] == "NIFTY" and r["expiry"] == "2025-12-30"
                            and r["strike"] == strike and r["instrument_type"] == "PE") for strike in (25000, 24800))
        main_key, hedge_key = f"NFO:{main['tradingsymbol']}", f"NFO:{hedge['tradingsymbol']}"
        kite.set_ltp(main_key, "100")
        kite.set_ltp(hedge_key, "40")
        assert run(signal_execution(account, options(lots=5, spot_price=25100))).status == Execution.Status.FILLED
        short = Position.objects.get(account=account, symbol=main_key)
        # 375 sold at 100, 150 bought at 40: credit 100 − 40 × 150 ÷ 375 = 84.
        assert short.breakeven == D("24916")

        kite.set_ltp("NSE:NIFTY 50", "25000.05")
        kite.set_ltp(main_key, "92.5")
        with django_capture_on_commit_callbacks(execute=True):
            assert stops_watch().closes == []
        [ltp] = kite.requests_to("/quote/ltp")
        assert sorted(ltp.query["i"]) == sorted([main_key, "NSE:NIFTY 50"])
        short.refresh_from_db()
        assert short.last_price == D("92.5")
        assert Quote.objects.get(broker="kite", symbol="NSE:NIFTY 50").price == D("25000.05")

        kite.set_ltp("NSE:NIFTY 50", "24990")
        with django_capture_on_commit_callbacks(execute=True):
            [started] = stops_watch().closes

        close = Execution.objects.get(pk=started)
        assert close.status == Execution.Status.FILLED, close.reason
        assert close.reason == "Stop loss hit: NIFTY spot 24990 at or below the 25000 PE strike"
        posts = [(p.one("transaction_type"), p.one("tradingsymbol"), p.one("quantity")) for p in kite.order_posts()]
        assert posts[2:] == [("BUY", main["tradingsymbol"], "375"), ("SELL", hedge["tradingsymbol"], "150")]
        assert not Position.objects.filter(account=account, status=Position.Status.OPEN).exists()


# --- Binance: the exchange closes, the watcher books ---------------------------------------------------------------

@pytest.mark.slow
def test_binance_stop_filled_at_the_exchange_is_booked_not_sent_again(owner, settings,
                                                                      django_capture_on_commit_callbacks):
    from brokers.services import account_create
    from tests.protocol.binance_server import BinanceServer, point_settings_at

    with BinanceServer() as binance:
        point_settings_at(settings, binance)
        settings.LIVE_TRADING_ENABLED = True
        account, _ = account_create(owner=owner, label="Binance futures", broker="binance", mode="live",
                                    currency="USDT", api_key=binance.api_key, api_secret=binance.api_secret,
                                    options={"market": "futures", "leverage": 5})
        entry = run(signal_execution(account, unify("buy", qty="0.002", sl={"mode": "pct", "value": "1"},
                                                    tp={"mode": "pct", "value": "2"})))
        assert entry.status == Execution.Status.FILLED, entry.reason
        position = Position.objects.get(account=account, symbol="BTCUSDT", status=Position.Status.OPEN)
        assert (position.stop_loss, position.take_profit) == (D("94282.2"), D("97139.2"))

        binance.set_price("BTCUSDT", "94300")  # above the stop: Binance holds, we hold
        with django_capture_on_commit_callbacks(execute=True):
            assert stops_watch().reconciled == []
        position.refresh_from_db()
        assert (position.status, position.last_price) == ("open", D("94300"))

        binance.set_price("BTCUSDT", "94200")  # the STOP_MARKET algo order fires at Binance
        assert "BTCUSDT" not in binance.account().positions
        binance.log.clear()
        with django_capture_on_commit_callbacks(execute=True):
            assert stops_watch().reconciled == [position.pk]
            assert stops_watch().reconciled == []

        assert binance.calls("/fapi/v1/order", "POST") == []  # nothing sent: the exchange already closed it
        assert [a["algoStatus"] for a in binance.account().algo] == ["FINISHED", "CANCELED"]
        position.refresh_from_db()
        assert (position.status, position.realized_pnl) == ("closed", D("-2.069"))
        [booked] = closes(account)
        assert (booked.status, booked.reason_code) == (Execution.Status.FILLED, "closed_at_broker")
        assert booked.reason == ("Closed at broker (stop/target): Binance no longer holds BTCUSDT; booked at the "
                                 "last price 94200 (stop 94282.2, target 97139.2)")


def test_watch_stops_command_runs_a_round_without_beat(account, django_capture_on_commit_callbacks):
    from io import StringIO

    from django.core.management import call_command

    long_btc(account)
    quote_set(broker="paper", symbol="BTCUSDT", price=D("111"))
    out = StringIO()

    with django_capture_on_commit_callbacks(execute=True):
        call_command("watch_stops", "--once", stdout=out)

    [close] = closes(account)
    assert (close.status, close.reason) == (Execution.Status.FILLED, "Take profit hit at 111 (target 110)")
    assert f"closes started: [{close.pk}]" in out.getvalue()


def test_the_beat_schedule_runs_the_watcher_and_the_order_sync(settings):
    tasks = {entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert tasks["brokers.tasks.stops_watch_task"] == settings.STOP_WATCH_SECONDS == 5
    assert tasks["brokers.tasks.orders_sync_task"] == settings.ORDER_SYNC_SECONDS
