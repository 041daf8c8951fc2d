"""Reconcile: a live position closed in the broker's own app (Kite web, the Binance app) is booked closed by the
periodic reconcile, after a grace period, without any order being sent.

The "app" is the real SDK talking to the local protocol servers (``tests/protocol/kite_server.py``,
``binance_server.py``) with the customer's keys and no TradeFlow client id: the broker's books change, TradeFlow's
do not, exactly as when the trader taps "exit" in the broker's app.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import date, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.conf import settings as django_settings
from django.utils import timezone

from brokers import live
from brokers.models import BrokerAccount, Execution, Order, Position
from brokers.services import account_create
from brokers.services.prices import prices_mark
from brokers.services.reconcile import positions_reconcile, reconcile_accounts
from brokers.tasks import instruments_sync_task, positions_reconcile_task
from tests.concurrency import run_at_once
from tests.protocol.binance_server import BinanceServer
from tests.protocol.kite_server import KiteServer, kite_market_at

pytestmark = pytest.mark.slow
D = Decimal
IST = ZoneInfo("Asia/Kolkata")
DEC24 = date(2025, 12, 24)  # the server's weekly NIFTY contract expires 2025-12-30, lot 75


@contextmanager
def after_grace():
    """The clock past RECONCILE_GRACE_SECONDS after the last fill (brokers report positions with a delay)."""
    with time_machine.travel(timezone.now() + timedelta(seconds=django_settings.RECONCILE_GRACE_SECONDS + 1),
                             tick=True):
        yield


@pytest.fixture
def published(monkeypatch):
    """What reached the customer's dashboard socket group (positions and executions), in order."""
    events: list[tuple[int, dict]] = []
    monkeypatch.setattr(live, "publish_many", events.extend)
    return events


@pytest.fixture
def reconcile(django_capture_on_commit_callbacks):
    def _reconcile(account):
        with django_capture_on_commit_callbacks(execute=True):
            return positions_reconcile(account)
    return _reconcile


def reconcile_executions(account) -> list[Execution]:
    return list(Execution.objects.filter(account=account, intent__trigger="reconcile").order_by("id"))


def open_positions(account) -> dict[str, Position]:
    return {p.symbol: p for p in Position.objects.filter(account=account, status=Position.Status.OPEN)}


# --- Zerodha Kite ------------------------------------------------------------------------------------------------

@pytest.fixture
def kite(settings):
    with kite_market_at(settings, DEC24) as server:
        yield server


@pytest.fixture
def zerodha(owner, kite) -> tuple[BrokerAccount, str]:
    prefs = owner.trading_settings
    prefs.hedge_pct = D("0")  # one leg: the short main option
    prefs.save()
    account, key = account_create(owner=owner, label="Zerodha", broker="kite", mode="live", api_key=kite.api_key,
                                  api_secret=kite.api_secret, access_token=kite.grant_access_token(),
                                  options={"product": "NRML"}, last_sync=timezone.now())
    assert instruments_sync_task() is not None
    return account, key.raw


@pytest.fixture
def short_put(kite, zerodha, client, django_capture_on_commit_callbacks) -> tuple[BrokerAccount, str]:
    """A short NIFTY 25000 PE of 4 lots (300) sold at 100 through TradeFlow; returns the account and contract."""
    account, key = zerodha
    contract = next(r for r in kite.instruments if r["name"] == "NIFTY" and r["expiry"] == "2025-12-30"
                    and r["strike"] == 25000 and r["instrument_type"] == "PE")["tradingsymbol"]
    kite.set_ltp(f"NFO:{contract}", "100")
    body = {"signal": "S1", "strike": 25000, "type": "PE", "action": "ENTRY", "spot_price": 24481, "lots": 4}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/webhooks/{key}", data=json.dumps(body), content_type="text/plain")
    execution = Execution.objects.get(signal_id=response.json()["signal_id"])
    assert execution.status == Execution.Status.FILLED, execution.reason
    held = open_positions(account)[f"NFO:{contract}"]
    assert (held.side, held.qty, held.avg_price) == ("short", D("300"), D("100"))
    return account, contract


def tradeflow_buy_back(client, capture, key: str, contract: str, qty: str) -> None:
    """TradeFlow itself buys back part of the short (a unify.v1 alert for the contract)."""
    body = {"version": "unify.v1", "intent": {"side": "buy", "symbol": f"NFO:{contract}", "qty": qty}}
    with capture(execute=True):
        response = client.post(f"/api/v1/webhooks/{key}", data=json.dumps(body), content_type="text/plain")
    execution = Execution.objects.get(signal_id=response.json()["signal_id"])
    assert execution.status == Execution.Status.FILLED, execution.reason


def kite_app_order(server: KiteServer, account, side: str, tradingsymbol: str, qty: int) -> None:
    """The trader trades in Kite's own app: the same order book, without TradeFlow's tag."""
    from kiteconnect import KiteConnect

    kc = KiteConnect(api_key=server.api_key, access_token=account.access_token, root=server.url)
    kc.place_order(variety="regular", exchange="NFO", tradingsymbol=tradingsymbol, transaction_type=side,
                   quantity=qty, product="NRML", order_type="MARKET", market_protection=-1)


def test_kite_position_closed_in_the_kite_app_is_booked_after_the_grace_period(kite, short_put, reconcile,
                                                                                published):
    account, contract = short_put
    kite.set_ltp(f"NFO:{contract}", "60")
    kite_app_order(kite, account, "BUY", contract, 300)  # bought back in the Kite app at 60
    kite.set_ltp(f"NFO:{contract}", "55")
    prices_mark()  # the price feed marks the position: the last price TradeFlow knows is 55, not the exit
    sent = len(kite.order_posts())

    early = reconcile(account)  # within the grace period: Kite's positions may lag TradeFlow's own fill

    assert early.booked == [] and "placed or filled in the last 120 s" in early.skipped[0]
    assert f"NFO:{contract}" in open_positions(account) and reconcile_executions(account) == []

    with after_grace():
        result = reconcile(account)

    # Booked at Kite's own average buy price of the day (the app's exit), not at the last known 55.
    assert [(b.symbol, b.qty, b.price) for b in result.booked] == [(f"NFO:{contract}", D("300"), D("60"))]
    assert open_positions(account) == {}
    closed = Position.objects.get(account=account, symbol=f"NFO:{contract}")
    assert (closed.status, closed.realized_pnl) == ("closed", D("12000"))  # sold 300 at 100, bought back at 60
    [execution] = reconcile_executions(account)
    assert (execution.kind, execution.status, execution.reason_code) == ("close", "filled", "closed_outside")
    assert execution.reason.startswith("Closed outside TradeFlow: Zerodha Kite holds nothing of ")
    assert execution.reason.endswith(f"300 NFO:{contract} booked closed at the broker's exit price 60 "
                                     "(from its trade book)")
    assert "last known" not in execution.reason and execution.intent["price_from"] == "broker"
    assert len(kite.order_posts()) == sent  # reconcile books, it never trades
    # The dashboard drops the row live and lists the execution with its reason.
    events = [event for user_id, event in published if user_id == account.owner_id]
    assert [(e["kind"], e.get("status")) for e in events] == [("position", "closed"), ("execution", "filled")]
    assert events[0]["symbol"] == f"NFO:{contract}" and events[1]["reason"] == execution.reason


def test_kite_partial_close_in_the_app_books_only_the_part_gone(kite, short_put, reconcile):
    account, contract = short_put
    kite.set_ltp(f"NFO:{contract}", "80")
    kite_app_order(kite, account, "BUY", contract, 75)  # one lot of four bought back in the Kite app at 80
    kite.set_ltp(f"NFO:{contract}", "70")
    prices_mark()

    with after_grace():
        result = reconcile(account)

    assert [(b.qty, b.price) for b in result.booked] == [(D("75"), D("80"))] and result.foreign == []
    still = open_positions(account)[f"NFO:{contract}"]
    assert (still.side, still.qty, still.avg_price, still.realized_pnl) == ("short", D("225"), D("100"), D("1500"))
    [execution] = reconcile_executions(account)
    assert "holds 225 short of" in execution.reason and "where TradeFlow had 300 short" in execution.reason
    assert "booked closed at the broker's exit price 80 (from its trade book)" in execution.reason

    # A second lot bought back later the same day at 90: Kite's day total (150 at 85) no longer tells the price
    # of this part alone, so it is booked at the last known price and the customer is told to check it.
    kite.set_ltp(f"NFO:{contract}", "90")
    kite_app_order(kite, account, "BUY", contract, 75)
    kite.set_ltp(f"NFO:{contract}", "95")
    prices_mark()
    with time_machine.travel(timezone.now() + timedelta(seconds=django_settings.RECONCILE_GRACE_SECONDS + 1),
                             tick=True):
        second = reconcile(account)

    assert [(b.qty, b.price, b.from_broker) for b in second.booked] == [(D("75"), D("95"), False)]
    assert open_positions(account)[f"NFO:{contract}"].realized_pnl == D("1500") + D("375")  # 75 x (100 - 95)
    assert "booked closed at the last known price 95: check the real exit price" in \
        reconcile_executions(account)[-1].reason


def test_kite_exit_price_is_not_taken_when_tradeflow_also_bought_back_today(kite, zerodha, short_put, reconcile,
                                                                           client, django_capture_on_commit_callbacks):
    account, contract = short_put
    kite.set_ltp(f"NFO:{contract}", "90")
    tradeflow_buy_back(client, django_capture_on_commit_callbacks, zerodha[1], contract, "75")  # TradeFlow at 90
    assert Order.objects.get(account=account, side="buy").symbol == f"NFO:{contract}"  # what reconcile looks up
    kite.set_ltp(f"NFO:{contract}", "60")
    kite_app_order(kite, account, "BUY", contract, 225)  # the rest bought back in the Kite app at 60
    kite.set_ltp(f"NFO:{contract}", "55")
    prices_mark()

    with after_grace():
        result = reconcile(account)

    # Kite's day average buy (75 at 90 + 225 at 60 = 67.5) mixes TradeFlow's fill with the app's: last known price.
    assert [(b.qty, b.price, b.from_broker) for b in result.booked] == [(D("225"), D("55"), False)]
    closed = Position.objects.get(account=account, symbol=f"NFO:{contract}")
    assert (closed.status, closed.realized_pnl) == ("closed", D("750") + D("10125"))  # 75 x 10 + 225 x 45
    [execution] = reconcile_executions(account)
    assert "booked closed at the last known price 55: check the real exit price in your broker's trade book" \
        in execution.reason and execution.intent["price_from"] == "last_known"


# --- Binance USDⓈ-M futures --------------------------------------------------------------------------------------

@pytest.fixture
def binance(binance, settings):  # the conftest server, with live accounts allowed to trade
    settings.LIVE_TRADING_ENABLED = True
    return binance


def connect_binance(owner, server: BinanceServer, label: str = "Binance futures",
                    api_key: str | None = None, api_secret: str | None = None) -> tuple[BrokerAccount, str]:
    account, key = account_create(owner=owner, label=label, broker="binance", mode="live", currency="USDT",
                                  api_key=api_key or server.api_key, api_secret=api_secret or server.api_secret,
                                  options={"market": "futures", "leverage": 5})
    return account, key.raw


@pytest.fixture
def buy(client, django_capture_on_commit_callbacks):
    def _buy(key: str, qty: str, symbol: str = "BTCUSDT") -> None:
        body = {"version": "unify.v1", "intent": {"side": "buy", "symbol": symbol, "qty": qty}}
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(f"/api/v1/webhooks/{key}", data=json.dumps(body), content_type="text/plain")
        execution = Execution.objects.get(signal_id=response.json()["signal_id"])
        assert execution.status == Execution.Status.FILLED, execution.reason
    return _buy


@pytest.fixture
def long_btc(owner, binance, buy) -> BrokerAccount:
    """Long 0.003 BTCUSDT bought at 95234.5 through TradeFlow."""
    account, key = connect_binance(owner, binance)
    buy(key, "0.003")
    return account


def binance_app_order(server: BinanceServer, side: str, qty: str, symbol: str = "BTCUSDT",
                      api_key: str | None = None, close: bool = True) -> None:
    """The trader trades in the Binance app: a market order on the same futures account, no TradeFlow id (its
    "close" is reduce-only, like the app's close button)."""
    from binance.client import Client

    key = api_key or server.api_key
    client = Client(key, server.account(key).secret, ping=False)
    client.FUTURES_URL = server.url + "/fapi"
    client.futures_create_order(symbol=symbol, side=side, type="MARKET", quantity=qty,
                                **({"reduceOnly": "true"} if close else {}))


def test_binance_futures_position_closed_in_the_app_is_booked_after_the_grace_period(binance, long_btc, reconcile,
                                                                                     published):
    binance.set_price("BTCUSDT", "96234.5")
    binance_app_order(binance, "SELL", "0.003")  # sold in the app at 96234.5
    binance.set_price("BTCUSDT", "97234.5")
    prices_mark()  # the last price TradeFlow knows is 97234.5, not the exit
    assert "BTCUSDT" not in binance.account().positions

    early = reconcile(long_btc)
    assert early.booked == [] and "BTCUSDT" in open_positions(long_btc)

    orders_before = len(binance.calls("/fapi/v1/order", "POST"))
    with after_grace():
        result = reconcile(long_btc)

    assert [(b.symbol, b.qty, b.price, b.realized) for b in result.booked] == [
        ("BTCUSDT", D("0.003"), D("96234.5"), D("3.0000"))]
    closed = Position.objects.get(account=long_btc, symbol="BTCUSDT")
    assert (closed.status, closed.realized_pnl) == ("closed", D("3"))
    [execution] = reconcile_executions(long_btc)
    assert (execution.status, execution.reason_code) == ("filled", "closed_outside")
    assert "Binance holds nothing of BTCUSDT where TradeFlow had 0.003 long" in execution.reason
    assert execution.reason.endswith("0.003 BTCUSDT booked closed at the broker's exit price 96234.5 (from its trade "
                                     "book)")
    assert len(binance.calls("/fapi/v1/order", "POST")) == orders_before  # nothing sent
    assert len(binance.calls("/fapi/v1/userTrades", "GET")) == 1  # the trade list, read once, when booking
    kinds = [(e["kind"], e.get("status")) for _, e in published]
    assert ("position", "closed") in kinds and ("execution", "filled") in kinds


def test_binance_partial_close_in_the_app_books_only_the_part_gone(binance, long_btc, reconcile):
    binance.set_price("BTCUSDT", "94234.5")
    binance_app_order(binance, "SELL", "0.001")  # a third sold in the app at 94234.5
    binance.set_price("BTCUSDT", "94000")
    prices_mark()

    with after_grace():
        result = reconcile(long_btc)

    assert [(b.qty, b.price, b.realized) for b in result.booked] == [(D("0.001"), D("94234.5"), D("-1.0000"))]
    still = open_positions(long_btc)["BTCUSDT"]
    assert (still.side, still.qty, still.realized_pnl) == ("long", D("0.002"), D("-1"))

    # The rest sold later in the app, in two fills: booked at those fills' average, the earlier one being the part
    # already booked.
    binance.set_price("BTCUSDT", "95734.5")
    binance_app_order(binance, "SELL", "0.001")
    binance.set_price("BTCUSDT", "96734.5")
    binance_app_order(binance, "SELL", "0.001")
    binance.set_price("BTCUSDT", "99000")
    prices_mark()
    with time_machine.travel(timezone.now() + timedelta(seconds=django_settings.RECONCILE_GRACE_SECONDS + 1),
                             tick=True):
        second = reconcile(long_btc)

    assert [(b.qty, b.price, b.from_broker) for b in second.booked] == [(D("0.002"), D("96234.5"), True)]
    closed = Position.objects.get(account=long_btc, symbol="BTCUSDT")
    assert (closed.status, closed.realized_pnl) == ("closed", D("1"))  # -1 + 0.002 x 1000


def test_binance_exit_price_is_not_taken_when_the_app_traded_both_ways(binance, long_btc, reconcile):
    binance_app_order(binance, "BUY", "0.002", close=False)  # the app added to the position at 95234.5 ...
    binance.set_price("BTCUSDT", "96234.5")
    binance_app_order(binance, "SELL", "0.005")  # ... then sold it all: which sale closed TradeFlow's part?
    binance.set_price("BTCUSDT", "97234.5")
    prices_mark()

    with after_grace():
        result = reconcile(long_btc)

    assert [(b.qty, b.price, b.from_broker) for b in result.booked] == [(D("0.003"), D("97234.5"), False)]
    [execution] = reconcile_executions(long_btc)
    assert "booked closed at the last known price 97234.5: check the real exit price" in execution.reason


@pytest.mark.pg
@pytest.mark.django_db(transaction=True)
def test_two_reconciles_at_once_book_once(binance, long_btc, monkeypatch):
    """Two beat rounds overlapping (or two workers): both read the broker and find the position gone, both ask
    the exit price, then race for the position's lock; the second finds it closed and books nothing."""
    import threading

    from brokers.services import reconcile as service

    binance_app_order(binance, "SELL", "0.003")
    both_read = threading.Barrier(2, timeout=30)
    price = service.exit_price

    def exit_price_when_both_read(*args, **kwargs):
        found = price(*args, **kwargs)
        both_read.wait()  # neither has locked the position yet
        return found

    monkeypatch.setattr(service, "exit_price", exit_price_when_both_read)
    def run():
        return positions_reconcile(BrokerAccount.objects.get(pk=long_btc.pk),
                                   now=timezone.now() + timedelta(seconds=200))

    results, errors = run_at_once([run, run])

    assert errors == []
    assert sorted(len(r.booked) for r in results) == [0, 1]
    assert len(reconcile_executions(long_btc)) == 1
    assert Position.objects.get(account=long_btc, symbol="BTCUSDT").status == Position.Status.CLOSED


def test_running_reconcile_twice_books_once(binance, long_btc, reconcile):
    binance_app_order(binance, "SELL", "0.003")

    with after_grace():
        first, second = reconcile(long_btc), reconcile(long_btc)

    assert len(first.booked) == 1 and second.booked == [] and second.skipped == []
    assert len(reconcile_executions(long_btc)) == 1
    assert Position.objects.get(account=long_btc, symbol="BTCUSDT").realized_pnl == D("0")  # price unchanged


def test_a_foreign_position_at_the_broker_is_reported_not_booked(binance, long_btc, reconcile):
    binance_app_order(binance, "BUY", "0.002", close=False)  # more BTC bought in the app
    binance_app_order(binance, "SELL", "0.05", symbol="ETHUSDT", close=False)  # an ETH short TradeFlow never opened

    with after_grace():
        result = reconcile(long_btc)

    assert result.booked == [] and reconcile_executions(long_btc) == []
    assert {(f.symbol, f.qty) for f in result.foreign} == {("BTCUSDT", D("0.002")), ("ETHUSDT", D("-0.05"))}
    assert open_positions(long_btc)["BTCUSDT"].qty == D("0.003")  # TradeFlow's own part only
    assert set(open_positions(long_btc)) == {"BTCUSDT"}


def test_a_position_with_a_close_in_flight_is_left_to_the_close(binance, long_btc, reconcile):
    binance_app_order(binance, "SELL", "0.003")
    position = open_positions(long_btc)["BTCUSDT"]
    Execution.objects.create(account=long_btc, kind=Execution.Kind.CLOSE, status=Execution.Status.RUNNING,
                             intent={"format": "manual", "action": "exit", "symbol": "BTCUSDT",
                                     "position_id": position.pk})

    with after_grace():
        result = reconcile(long_btc)

    assert result.booked == [] and result.skipped == ["an execution is in flight"]
    assert "BTCUSDT" in open_positions(long_btc)


def test_a_close_that_starts_while_reconcile_reads_the_broker_is_found_under_the_lock(binance, long_btc, reconcile,
                                                                                     monkeypatch):
    """The account looked idle when reconcile started; by the time it locks the position to book it, a close of that
    position has started (the customer clicked Close): the booking is left to that close."""
    from brokers.services import reconcile as service

    binance_app_order(binance, "SELL", "0.003")
    position = open_positions(long_btc)["BTCUSDT"]
    held = service._held

    def held_then_close_starts(adapter):
        found = held(adapter)
        Execution.objects.create(account=long_btc, kind=Execution.Kind.CLOSE, status=Execution.Status.PLACED,
                                 intent={"format": "manual", "action": "exit", "symbol": "BTCUSDT",
                                         "position_id": position.pk})
        return found

    monkeypatch.setattr(service, "_held", held_then_close_starts)
    with after_grace():
        result = reconcile(long_btc)

    assert result.booked == [] and result.skipped == ["BTCUSDT: a close is in flight"]
    assert "BTCUSDT" in open_positions(long_btc) and reconcile_executions(long_btc) == []


def two_long_customers(owner, other, binance, buy, first_label: str, second_label: str):
    """Two customers long 0.002 BTCUSDT on their own Binance keys; the second closed it in the Binance app."""
    first, first_key = connect_binance(owner, binance, label=first_label)
    buy(first_key, "0.002")
    api_key, api_secret = binance.add_account()
    second, second_key = connect_binance(other, binance, label=second_label, api_key=api_key, api_secret=api_secret)
    buy(second_key, "0.002")
    binance_app_order(binance, "SELL", "0.002", api_key=api_key)  # closed in the app
    return first, second


def test_one_accounts_broker_error_does_not_stop_another_accounts_reconcile(owner, other, binance, buy,
                                                                            django_capture_on_commit_callbacks):
    broken, fine = two_long_customers(owner, other, binance, buy, "Revoked key", "Other customer")
    binance.accounts.pop(binance.api_key)  # the first customer deleted the API key at Binance

    with after_grace(), django_capture_on_commit_callbacks(execute=True):
        summary = positions_reconcile_task()

    assert summary["accounts"] == 2 and summary["booked"] == 1
    assert open_positions(fine) == {} and len(reconcile_executions(fine)) == 1
    assert "BTCUSDT" in open_positions(broken) and reconcile_executions(broken) == []
    broken.refresh_from_db()
    assert broken.status == BrokerAccount.Status.LOGIN_NEEDED and "Binance refused the API key" in \
        broken.status_message
    assert any(s.startswith(f"{broken.pk}: Binance refused the API key") for s in summary["skipped"])


def test_an_account_that_crashes_does_not_stop_the_others(owner, other, binance, buy, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    from brokers.services import reconcile as service

    crashing, fine = two_long_customers(owner, other, binance, buy, "Crashing", "Fine")
    held = service._held

    def _held(adapter):
        if adapter.account.pk == crashing.pk:
            raise RuntimeError("a bug of ours")
        return held(adapter)
    monkeypatch.setattr(service, "_held", _held)

    with after_grace(), django_capture_on_commit_callbacks(execute=True):
        summary = positions_reconcile_task()

    assert summary["booked"] == 1 and f"{crashing.pk}: internal error" in summary["skipped"]
    assert open_positions(fine) == {}


def test_only_live_accounts_are_reconciled_and_only_while_live_trading_is_on(owner, binance, long_btc, paper,
                                                                             settings):
    paper, _ = paper
    Position.objects.create(account=paper, symbol="BTCUSDT", side="long", qty=D("1"), avg_price=D("1"))
    assert list(reconcile_accounts()) == [long_btc]
    assert positions_reconcile(paper).skipped == ["paper account: TradeFlow's books are the broker"]
    settings.LIVE_TRADING_ENABLED = False
    assert list(reconcile_accounts()) == []
    assert positions_reconcile(long_btc).skipped == ["live trading is switched off"]


def test_a_binance_position_with_a_stop_at_the_exchange_is_left_to_the_stop_watcher(binance, long_btc, reconcile):
    """Its stop / target orders sit at Binance: the stop watcher books the close and cancels the other of the pair;
    reconcile booking it first would leave that order behind to close the symbol's next position."""
    Position.objects.filter(account=long_btc, symbol="BTCUSDT").update(stop_loss=D("90000"))
    binance_app_order(binance, "SELL", "0.003")

    with after_grace():
        result = reconcile(long_btc)

    assert result.booked == [] and result.foreign == [] and reconcile_executions(long_btc) == []
    assert any("stop watcher" in why for why in result.skipped)
    assert "BTCUSDT" in open_positions(long_btc)


def test_the_binance_exit_price_is_never_taken_from_a_trade_list_that_ends_before_now(binance, long_btc):
    """userTrades answers 7 days from its start: past that, an older outside fill (one already booked) would pass
    for this close's price. The last known price is used instead, and Binance is not asked."""
    from brokers.adapters import get_adapter
    from brokers.services.exit_price import exit_price

    position = open_positions(long_btc)["BTCUSDT"]
    asked = len(binance.calls("/fapi/v1/userTrades", "GET"))
    later = timezone.now() + timedelta(days=8)
    assert exit_price(long_btc, get_adapter(long_btc), position, D("0.003"), now=later) is None
    assert len(binance.calls("/fapi/v1/userTrades", "GET")) == asked
