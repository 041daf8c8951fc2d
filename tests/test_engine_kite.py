"""Options signals on a live Zerodha account, end to end: webhook → engine → the real ``kiteconnect`` client →
the local Kite Connect server (``tests/protocol/kite_server.py``), which enforces Kite's order rules.

The clock is set to a trading day in India, so "the current weekly contract" is a fixed one of the server's
instruments list; tests find contracts by their fields in that list, never by spelling a tradingsymbol.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.utils import timezone

from brokers.models import BrokerAccount, Execution, Instrument, Order, Position
from brokers.services import account_create
from brokers.tasks import instruments_sync_task
from tests.protocol.kite_server import KiteServer, kite_market_at

pytestmark = pytest.mark.slow
D = Decimal
IST = ZoneInfo("Asia/Kolkata")
DEC24 = date(2025, 12, 24)  # weekly contract: 2025-12-30, lot 75
DEC31 = date(2025, 12, 31)  # rolled over: 2026-01-06, lot 65


@pytest.fixture
def market_day() -> date:
    return DEC24


@pytest.fixture
def kite(settings, market_day):
    with kite_market_at(settings, market_day) as server:
        yield server


@pytest.fixture
def prefs(owner):
    settings_ = owner.trading_settings
    settings_.hedge_pct, settings_.hedge_strike_offset = D("30"), 200
    settings_.save()
    return settings_


def connect(owner, server: KiteServer, **options) -> tuple[BrokerAccount, str]:
    account, key = account_create(owner=owner, label="Zerodha", broker="kite", mode="live", api_key=server.api_key,
                                  api_secret=server.api_secret, access_token=server.grant_access_token(),
                                  options={"product": "NRML", **options},
                                  last_sync=timezone.now())  # as the Kite login leaves it
    return account, key.raw


@pytest.fixture
def zerodha(owner, kite, prefs) -> tuple[BrokerAccount, str]:
    """A logged-in live Zerodha account, with today's instruments synced by the daily task."""
    account, key = connect(owner, kite)
    assert instruments_sync_task() is not None
    return account, key


def alert(client, key: str, action: str = "ENTRY", strike: int = 25000, type_: str = "PE", **extra) -> Execution:
    body = {"signal": "S1", "strike": strike, "type": type_, "action": action, "spot_price": 24481, **extra}
    response = client.post(f"/api/v1/webhooks/{key}", data=json.dumps(body), content_type="text/plain")
    assert response.status_code == 202, response.content
    return Execution.objects.get(signal_id=response.json()["signal_id"])


@pytest.fixture
def send(client, django_capture_on_commit_callbacks):
    def _send(key: str, **kwargs) -> Execution:
        with django_capture_on_commit_callbacks(execute=True):
            execution = alert(client, key, **kwargs)
        execution.refresh_from_db()
        return execution
    return _send


def listed(server: KiteServer, expiry: str, strike: int, option_type: str = "PE") -> dict:
    return next(r for r in server.instruments if r["name"] == "NIFTY" and r["expiry"] == expiry
                and r["strike"] == strike and r["instrument_type"] == option_type)


def posted(server: KiteServer) -> list[tuple]:
    return [(p.one("transaction_type"), p.one("tradingsymbol"), int(p.one("quantity")), p.one("tag"))
            for p in server.order_posts()]


def open_positions(account) -> dict[str, Position]:
    return {p.symbol: p for p in Position.objects.filter(account=account, status=Position.Status.OPEN)}


# --- entry: the right contract, the right lot size, hedge first -------------------------------------------

@pytest.mark.parametrize(("market_day", "expiry", "lot"), [(DEC24, "2025-12-30", 75), (DEC31, "2026-01-06", 65)])
def test_options_entry_trades_the_current_weekly_contract_hedge_first(kite, zerodha, send, market_day, expiry, lot):
    account, key = zerodha
    main, hedge = listed(kite, expiry, 25000), listed(kite, expiry, 24800)
    kite.set_ltp(f"NFO:{main['tradingsymbol']}", "120.5")
    kite.set_ltp(f"NFO:{hedge['tradingsymbol']}", "42.05")

    execution = send(key, lots=10)

    assert execution.status == Execution.Status.FILLED, execution.reason
    orders = {o.leg: o for o in Order.objects.filter(execution=execution)}
    assert posted(kite) == [("BUY", hedge["tradingsymbol"], 3 * lot, orders["hedge"].client_order_id),
                            ("SELL", main["tradingsymbol"], 10 * lot, orders["main"].client_order_id)]
    first, second = kite.order_posts()
    assert {first.one("exchange"), first.one("product"), first.one("market_protection")} == {"NFO", "NRML", "-1"}
    assert second.at >= first.at and orders["hedge"].filled_at <= orders["main"].sent_at
    positions = open_positions(account)
    short = positions[f"NFO:{main['tradingsymbol']}"]
    long = positions[f"NFO:{hedge['tradingsymbol']}"]
    assert (short.side, short.qty, short.avg_price) == ("short", 10 * lot, D("120.5"))
    assert (long.side, long.qty, long.avg_price) == ("long", 3 * lot, D("42.05"))
    assert (short.meta["expiry"], short.meta["lot_size"], short.meta["hedge_symbol"]) == (
        expiry, str(lot), long.symbol)


@pytest.mark.parametrize("market_day", [DEC31])
def test_a_main_leg_above_the_freeze_quantity_goes_in_slices(kite, zerodha, send, market_day):
    account, key = zerodha
    main, hedge = listed(kite, "2026-01-06", 25000), listed(kite, "2026-01-06", 24800)

    execution = send(key, lots=30)  # 1950 units: NIFTY's freeze limit is 1800

    assert execution.status == Execution.Status.FILLED, execution.reason
    main_cid = Order.objects.get(execution=execution, leg="main").client_order_id
    assert [row[:3] for row in posted(kite)] == [("BUY", hedge["tradingsymbol"], 9 * 65),
                                                 ("SELL", main["tradingsymbol"], 1755),
                                                 ("SELL", main["tradingsymbol"], 195)]
    assert len(kite.tagged(main_cid)) == 2
    assert open_positions(account)[f"NFO:{main['tradingsymbol']}"].qty == 1950


def test_a_strike_the_exchange_does_not_list_is_rejected_and_nothing_is_sent(kite, zerodha, send):
    execution = send(zerodha[1], strike=25050)

    assert (execution.status, execution.reason_code) == ("rejected", "instrument_not_found")
    assert "NIFTY 25050 PE is not listed for the 2025-12-30 expiry" in execution.reason
    assert kite.order_posts() == []


def test_without_synced_instruments_the_entry_says_to_sync(owner, kite, prefs, send):
    _, key = connect(owner, kite)
    execution = send(key)
    assert (execution.status, execution.reason_code) == ("rejected", "instrument_not_found")
    assert "run the instruments sync" in execution.reason
    assert kite.requests == []


# --- exit: main first, then hedge ------------------------------------------------------------------------

def test_exit_buys_back_the_main_leg_first_then_sells_the_hedge(kite, zerodha, send):
    account, key = zerodha
    main, hedge = listed(kite, "2025-12-30", 25000), listed(kite, "2025-12-30", 24800)
    kite.set_ltp(f"NFO:{main['tradingsymbol']}", "100")
    kite.set_ltp(f"NFO:{hedge['tradingsymbol']}", "40")
    assert send(key, lots=5).status == Execution.Status.FILLED
    kite.set_ltp(f"NFO:{main['tradingsymbol']}", "60")
    kite.set_ltp(f"NFO:{hedge['tradingsymbol']}", "25")

    execution = send(key, action="Exit")

    assert execution.status == Execution.Status.FILLED, execution.reason
    assert [row[:3] for row in posted(kite)[2:]] == [("BUY", main["tradingsymbol"], 375),
                                                     ("SELL", hedge["tradingsymbol"], 150)]
    assert [o.leg for o in Order.objects.filter(execution=execution).order_by("id")] == ["exit_main", "exit_hedge"]
    assert open_positions(account) == {}
    closed = {p.symbol: p.realized_pnl for p in Position.objects.filter(account=account)}
    assert closed == {f"NFO:{main['tradingsymbol']}": 375 * 40, f"NFO:{hedge['tradingsymbol']}": 150 * -15}
    assert {(p["tradingsymbol"], p["quantity"]) for p in kite._positions()["net"]} == {
        (main["tradingsymbol"], 0), (hedge["tradingsymbol"], 0)}


# --- closed in the Kite app: a close never opens a new position --------------------------------------------

def kite_app_order(server: KiteServer, account, side: str, tradingsymbol: str, qty: int) -> None:
    """The trader trades in Kite's own app: the same order book, without TradeFlow."""
    from kiteconnect import KiteConnect

    kc = KiteConnect(api_key=server.api_key, access_token=account.access_token, root=server.url)
    kc.place_order(variety="regular", exchange="NFO", tradingsymbol=tradingsymbol, transaction_type=side,
                   quantity=qty, product="NRML", order_type="MARKET", market_protection=-1)


def test_exit_after_the_main_leg_was_closed_in_the_kite_app_sends_only_the_hedge(kite, zerodha, send):
    account, key = zerodha
    main, hedge = listed(kite, "2025-12-30", 25000), listed(kite, "2025-12-30", 24800)
    kite.set_ltp(f"NFO:{main['tradingsymbol']}", "100")
    kite.set_ltp(f"NFO:{hedge['tradingsymbol']}", "40")
    assert send(key, lots=5).status == Execution.Status.FILLED
    kite.set_ltp(f"NFO:{main['tradingsymbol']}", "80")
    kite_app_order(kite, account, "BUY", main["tradingsymbol"], 375)  # bought back in the Kite app, at 80
    kite.set_ltp(f"NFO:{main['tradingsymbol']}", "60")
    sent = len(kite.order_posts())

    execution = send(key, action="Exit")

    assert (execution.status, execution.reason_code) == ("filled", "closed_outside"), execution.reason
    assert f"Kite holds no {main['tradingsymbol']} (NRML) position to close" in execution.reason
    # At the price the app bought it back (Kite's day positions), not TradeFlow's last mark: short 375 from 100.
    assert "booked closed at the broker's exit price 80 (from its trade book)" in execution.reason
    main_position = Position.objects.get(account=account, symbol=f"NFO:{main['tradingsymbol']}")
    assert main_position.realized_pnl == D("7500")
    # No BUY that would have opened a new long: only the hedge is sold.
    assert [row[:3] for row in posted(kite)[sent:]] == [("SELL", hedge["tradingsymbol"], 150)]
    assert open_positions(account) == {}
    assert {(p["tradingsymbol"], p["quantity"]) for p in kite._positions()["net"]} == {
        (main["tradingsymbol"], 0), (hedge["tradingsymbol"], 0)}
    exit_main = Order.objects.get(execution=execution, leg="exit_main")
    assert exit_main.status == "rejected" and "Nothing was sent" in exit_main.reject_reason


def test_a_close_takes_off_only_what_kite_still_holds(kite, zerodha, send, prefs,
                                                      django_capture_on_commit_callbacks):
    from brokers.services.positions import position_close

    prefs.hedge_pct = D("0")
    prefs.save()
    account, key = zerodha
    main = listed(kite, "2025-12-30", 25000)
    kite.set_ltp(f"NFO:{main['tradingsymbol']}", "100")
    assert send(key, lots=4).status == Execution.Status.FILLED  # short 300
    kite_app_order(kite, account, "BUY", main["tradingsymbol"], 75)  # one lot bought back in the Kite app
    position = open_positions(account)[f"NFO:{main['tradingsymbol']}"]
    sent = len(kite.order_posts())

    with django_capture_on_commit_callbacks(execute=True):
        close = position_close(position=position)
    close.refresh_from_db()

    assert close.status == Execution.Status.FILLED and close.reason_code == "closed_outside", close.reason
    assert [row[:3] for row in posted(kite)[sent:]] == [("BUY", main["tradingsymbol"], 225)]
    assert open_positions(account) == {}
    assert {(p["tradingsymbol"], p["quantity"]) for p in kite._positions()["net"]} == {(main["tradingsymbol"], 0)}


# --- failures a trader must understand -------------------------------------------------------------------

def test_token_expired_mid_day_fails_marks_login_needed_and_sends_nothing_more(kite, zerodha, send):
    account, key = zerodha
    assert send(key, lots=2).status == Execution.Status.FILLED
    kite.expire_tokens()  # Kite's morning flush, or a logout elsewhere

    failed = send(key, lots=2, strike=25100)

    assert (failed.status, failed.reason_code) == ("failed", "kite_token")
    assert "Incorrect `api_key` or `access_token`" in failed.reason and "log in to Kite again" in failed.reason
    account.refresh_from_db()
    assert account.status == BrokerAccount.Status.LOGIN_NEEDED
    assert "log in to Kite again" in account.status_message
    sent = len(kite.order_posts())

    later = send(key, lots=2, strike=25200)

    assert (later.status, later.reason_code) == ("rejected", "login_needed")
    assert "needs a broker login" in later.reason
    assert len(kite.order_posts()) == sent and len(kite.orders) == 2


def test_a_timeout_after_kite_accepted_leaves_exactly_one_order(owner, kite, prefs, send):
    prefs.hedge_pct = D("0")
    prefs.save()
    account, key = connect(owner, kite, timeout=0.5)
    instruments_sync_task()
    kite.timeout_next_order(seconds=1.5)

    execution = send(key, lots=2)

    assert execution.status == Execution.Status.FILLED, execution.reason
    order = Order.objects.get(execution=execution)
    assert len(kite.order_posts()) == 1 and len(kite.tagged(order.client_order_id)) == 1
    assert (order.status, order.filled_qty) == ("filled", 150)
    assert [p.qty for p in open_positions(account).values()] == [150]


def test_a_hedge_not_filled_in_time_is_cancelled_and_the_main_leg_not_placed(kite, zerodha, send, settings):
    account, key = zerodha
    settings.KITE_FILL_WAIT = 0.3
    kite.hold_orders = True  # the exchange does not fill it
    hedge = listed(kite, "2025-12-30", 24800)

    execution = send(key, lots=10)

    assert (execution.status, execution.reason_code) == ("failed", "hedge_not_filled")
    assert execution.reason == (f"Hedge BUY 225 NFO:{hedge['tradingsymbol']} not filled within 0.3 s; "
                                "main SELL not placed; hedge order cancelled")
    assert [row[:2] for row in posted(kite)] == [("BUY", hedge["tradingsymbol"])]
    assert [o["status"] for o in kite.orders] == ["CANCELLED"]
    assert [(o.leg, o.status) for o in Order.objects.filter(execution=execution)] == [("hedge", "cancelled")]
    assert open_positions(account) == {}


# --- the daily instruments sync ----------------------------------------------------------------------------

def test_the_daily_sync_uses_a_live_session_and_runs_once_a_day(owner, kite, settings):
    assert "brokers.tasks.instruments_sync_task" in {e["task"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    stale, _ = account_create(owner=owner, label="Old session", broker="kite", mode="live", api_key=kite.api_key,
                              access_token="expired-yesterday")
    connect(owner, kite)  # logged in today: tried first

    result = instruments_sync_task()

    assert result["rows"] == {"NFO": len([r for r in kite.instruments if r["exchange"] == "NFO"]), "NSE": 2}
    assert Instrument.objects.filter(broker="kite", expiry__lt=DEC24).count() == 0
    assert Instrument.objects.get(tradingsymbol=listed(kite, "2026-01-06", 25000)["tradingsymbol"]).lot_size == 65
    downloads = len(kite.requests_to("/instruments/NFO"))
    assert instruments_sync_task() is None  # already synced today: nothing downloaded
    assert len(kite.requests_to("/instruments/NFO")) == downloads == 1
    stale.refresh_from_db()
    assert stale.status == BrokerAccount.Status.ACTIVE  # never needed


def test_the_daily_sync_skips_dead_sessions_and_skips_when_none_is_live(owner, kite, caplog):
    dead, _ = account_create(owner=owner, label="Zerodha", broker="kite", mode="live", api_key=kite.api_key,
                             access_token=kite.grant_access_token())
    kite.expire_tokens()
    account_create(owner=owner, label="Never logged in", broker="kite", mode="live", api_key=kite.api_key)

    assert instruments_sync_task() is None

    assert Instrument.objects.count() == 0
    dead.refresh_from_db()
    assert dead.status == BrokerAccount.Status.LOGIN_NEEDED and "log in to Kite again" in dead.status_message
    assert "no Kite account with a live session" in caplog.text
    assert len(kite.requests_to("/instruments/NFO")) == 1  # only the dead session was tried


def test_the_daily_sync_waits_for_the_days_list(owner, kite):
    connect(owner, kite)
    with time_machine.travel(datetime(2025, 12, 24, 7, 30, tzinfo=IST)):  # before Kite publishes the list
        assert instruments_sync_task() is None
    assert kite.requests == []
    assert instruments_sync_task(force=True)["rows"]["NSE"] == 2
