"""The risk engine in the execution path: the user's rules, the global kill switch, limits under concurrency,
daily loss (and flatten), news lockout from imported calendars."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from brokers.models import Execution, Position
from brokers.services import position_close
from risk.calendar import CalendarImportError, calendar_import
from risk.models import CalendarEvent, RiskAdmission, RiskConfig, TradingHalt
from risk.services import trading_halt_set
from tests import factories
from tests.test_execution import FakeAdapter, FakeBroker, run, signal_execution, unify
from webhooks.models import WebhookLog

D = Decimal


@pytest.fixture
def broker(monkeypatch) -> FakeBroker:
    fake = FakeBroker()
    monkeypatch.setattr("brokers.services.execution.get_adapter", lambda account: FakeAdapter(account, fake))
    return fake


@pytest.fixture
def account(paper):
    return paper[0]


def rules(user, **fields) -> RiskConfig:
    config, _ = RiskConfig.objects.update_or_create(user=user, defaults=fields)
    return config


def entry(account, symbol="BTCUSDT", qty="1", price="100") -> Execution:
    return run(signal_execution(account, unify("buy", symbol=symbol, qty=qty, price=price)))


def exit_(account, symbol="BTCUSDT") -> Execution:
    return run(signal_execution(account, unify("close", symbol=symbol, qty=None, price=None)))


# --- kill switch ---------------------------------------------------------------------------------------------


def test_kill_switch_acknowledges_and_logs_signals_but_executes_nothing_until_resumed(
        client, paper, broker, admin_user, django_capture_on_commit_callbacks):
    account, key = paper
    trading_halt_set(halted=True, actor=admin_user, reason="exchange outage")
    body = '{"version": "unify.v1", "intent": {"side": "buy", "symbol": "BTCUSDT", "qty": "1", "price": "100"}}'
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/webhooks/{key}", data=body, content_type="text/plain")

    assert response.status_code == 202
    assert WebhookLog.objects.filter(account=account, status=202).count() == 1
    execution = Execution.objects.get(account=account)
    assert execution.status == Execution.Status.REJECTED and execution.reason_code == "trading_halted"
    assert "Trading halted" in execution.reason
    assert broker.calls == []

    trading_halt_set(halted=False, actor=admin_user)
    assert entry(account).status == Execution.Status.FILLED
    assert [h.halted for h in TradingHalt.objects.all()] == [False, True]


def test_manual_close_still_runs_while_trading_is_halted(account, broker, owner):
    assert entry(account).status == Execution.Status.FILLED
    trading_halt_set(halted=True)
    assert exit_(account).reason_code == "trading_halted"  # a signal, even an exit: nothing executes

    close = position_close(position=Position.objects.get(account=account), actor=owner)
    assert run(close).status == Execution.Status.FILLED
    assert not Position.objects.filter(account=account, status=Position.Status.OPEN).exists()


def test_rejection_is_visible_on_the_customers_executions_page(owner_client, account, broker, owner):
    rules(owner, max_trades_per_day=0)
    entry(account)
    page = owner_client.get("/executions/").content.decode()
    assert "Daily trade limit reached: 0 trades" in page


# --- entry rules in the engine --------------------------------------------------------------------------------


def test_daily_trade_limit_blocks_entries_but_exits_still_run(account, broker, owner):
    rules(owner, max_trades_per_day=2)
    assert entry(account, "AAA").status == Execution.Status.FILLED
    assert entry(account, "BBB").status == Execution.Status.FILLED
    third = entry(account, "CCC")
    assert third.status == Execution.Status.REJECTED and third.reason == "Daily trade limit reached: 2 trades"

    assert exit_(account, "AAA").status == Execution.Status.FILLED
    assert len(broker.placed) == 3


def test_max_open_positions_counts_positions_on_every_account(account, broker, owner):
    second, _ = factories.paper_account(owner=owner, label="Second")
    rules(owner, max_open_positions=2)
    assert entry(account, "AAA").status == Execution.Status.FILLED
    assert entry(second, "BBB").status == Execution.Status.FILLED
    blocked = entry(account, "CCC")
    assert blocked.reason_code == "max_open_positions" and blocked.reason.startswith("Max open positions: 2")

    exit_(account, "AAA")
    assert entry(account, "CCC").status == Execution.Status.FILLED


def test_a_rejected_entry_does_not_use_a_trade_slot(account, broker, owner):
    rules(owner, max_trades_per_day=1, denied_instruments="DOGEUSDT")
    assert entry(account, "DOGEUSDT").reason == "DOGEUSDT is on your denied list"
    assert entry(account, "BTCUSDT").status == Execution.Status.FILLED
    assert RiskAdmission.objects.count() == 1


def test_trades_today_counts_from_midnight_in_the_users_timezone(account, broker, owner):
    rules(owner, max_trades_per_day=1)
    with time_machine.travel("2026-03-04 18:00 +00:00", tick=False):  # 23:30 IST, March 4
        assert entry(account, "AAA").status == Execution.Status.FILLED
    with time_machine.travel("2026-03-04 18:45 +00:00", tick=False):  # 00:15 IST, March 5: a new day
        assert entry(account, "BBB").status == Execution.Status.FILLED
        assert entry(account, "CCC").reason_code == "daily_trade_limit"


def losing_day(account, loss: str) -> None:
    Position.objects.create(account=account, symbol="LOSS", side="long", qty=0, avg_price=D("100"),
                            realized_pnl=-D(loss), status=Position.Status.CLOSED, closed_at=timezone.now())


def test_daily_loss_limit_blocks_entries_with_the_amount(account, broker, owner):
    rules(owner, max_daily_loss=D("2000"))
    losing_day(account, "2000")
    blocked = entry(account)
    assert blocked.reason_code == "daily_loss_limit"
    assert blocked.reason.startswith("Daily loss limit reached: ₹2,000")


def test_unrealized_loss_counts_toward_the_daily_loss(account, broker, owner):
    assert entry(account, "AAA", qty="10", price="100").status == Execution.Status.FILLED
    Position.objects.filter(symbol="AAA").update(last_price=D("80"))  # -200 open
    rules(owner, max_daily_loss=D("150"))
    assert entry(account, "BBB").reason_code == "daily_loss_limit"


def test_daily_loss_with_flatten_closes_open_positions(account, broker, owner):
    assert entry(account, "AAA").status == Execution.Status.FILLED
    rules(owner, max_daily_loss=D("500"), flatten_on_daily_loss=True)
    losing_day(account, "600")

    assert entry(account, "BBB").reason_code == "daily_loss_limit"

    close = Execution.objects.get(kind=Execution.Kind.CLOSE)
    assert run(close).status == Execution.Status.FILLED
    assert "Daily loss limit reached" in close.reason
    assert not Position.objects.filter(status=Position.Status.OPEN).exists()


def test_news_lockout_from_the_calendar_blocks_entries_around_high_impact_events(account, broker, owner):
    assert entry(account, "ETHUSDT").status == Execution.Status.FILLED
    rules(owner, news_lockout_enabled=True, news_minutes_before=5, news_minutes_after=5, news_markets="USD")
    now = timezone.now()
    CalendarEvent.objects.create(starts_at=now + timedelta(minutes=2, seconds=30), market="USD", title="US CPI")
    CalendarEvent.objects.create(starts_at=now + timedelta(minutes=1), market="JPY", title="BoJ rate")
    CalendarEvent.objects.create(starts_at=now + timedelta(minutes=1), market="USD", title="Claims", impact="low")

    blocked = entry(account)
    assert blocked.reason.startswith("News lockout: US CPI in 3 minutes")
    assert exit_(account, "ETHUSDT").status == Execution.Status.FILLED  # exits are never locked out


def test_risk_rules_switched_off_check_nothing(account, broker, owner):
    rules(owner, enabled=False, max_trades_per_day=0)
    assert entry(account).status == Execution.Status.FILLED


# --- limits under concurrency ---------------------------------------------------------------------------------


@pytest.mark.pg
@pytest.mark.django_db(transaction=True)
def test_twenty_simultaneous_entries_never_pass_the_limits(monkeypatch):
    from brokers.services.execution import execution_run

    fake = FakeBroker()
    lock = threading.Lock()

    class SerialAdapter(FakeAdapter):
        def place_order(self, request):
            with lock:  # the fake's book is not thread-safe; the engine under test is
                return super().place_order(request)

    monkeypatch.setattr("brokers.services.execution.get_adapter", lambda account: SerialAdapter(account, fake))
    owner = factories.UserFactory(email="racer@example.com")
    account, _ = factories.paper_account(owner=owner)
    rules(owner, max_open_positions=3, max_trades_per_day=5)
    executions = [signal_execution(account, unify("buy", symbol=f"SYM{n}")) for n in range(20)]
    start = threading.Barrier(len(executions))
    errors: list[BaseException] = []

    def worker(execution_id: int) -> None:
        try:
            start.wait()
            execution_run(execution_id=execution_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(e.pk,)) for e in executions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert errors == []
    statuses = list(Execution.objects.values_list("status", flat=True))
    assert statuses.count(Execution.Status.FILLED) == 3
    assert statuses.count(Execution.Status.REJECTED) == 17
    assert Position.objects.filter(status=Position.Status.OPEN).count() == 3
    assert len(fake.placed) == 3
    assert set(Execution.objects.filter(status="rejected").values_list("reason_code", flat=True)) == {
        "max_open_positions"}


# --- calendar import ------------------------------------------------------------------------------------------

CSV = """time,market,impact,title
2026-03-11T12:30:00Z,USD,high,US CPI
2026-03-11 14:00,EUR,medium,ECB speech
not-a-date,USD,high,Broken
2026-03-12T08:30:00+05:30,INR,huge,Bad impact
"""

ICS = """BEGIN:VCALENDAR\r
VERSION:2.0\r
BEGIN:VEVENT\r
UID:fomc-2026-03@example.com\r
DTSTART:20260318T180000Z\r
SUMMARY:FOMC rate\r
  decision\r
CATEGORIES:USD\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:rbi-2026-04@example.com\r
DTSTART;TZID=Asia/Kolkata:20260408T100000\r
SUMMARY:RBI policy\r
X-MARKET:INR\r
PRIORITY:9\r
END:VEVENT\r
END:VCALENDAR\r
"""


def test_csv_import_creates_events_and_names_the_bad_lines(db):
    result = calendar_import(name="week.csv", content=CSV.encode())
    assert (result.created, result.updated) == (2, 0)
    assert result.errors == ["line 4: time 'not-a-date' is not an ISO date-time (2026-01-14T13:30Z)",
                             "line 5: impact 'huge' is not low, medium or high"]
    cpi = CalendarEvent.objects.get(title="US CPI")
    assert cpi.market == "USD" and cpi.impact == "high" and cpi.starts_at.isoformat() == "2026-03-11T12:30:00+00:00"
    assert CalendarEvent.objects.get(title="ECB speech").starts_at.hour == 14  # naive times are UTC


def test_ics_import_reads_times_zones_and_folded_lines_and_reimport_updates(db):
    assert calendar_import(name="cal.ics", content=ICS.encode()).created == 2
    fomc = CalendarEvent.objects.get(uid="fomc-2026-03@example.com")
    assert fomc.title == "FOMC rate decision" and fomc.market == "USD" and fomc.impact == "high"
    rbi = CalendarEvent.objects.get(uid="rbi-2026-04@example.com")
    assert rbi.starts_at.isoformat() == "2026-04-08T04:30:00+00:00" and rbi.impact == "low" and rbi.market == "INR"

    again = calendar_import(name="cal.ics", content=ICS.encode())
    assert (again.created, again.updated) == (0, 2) and CalendarEvent.objects.count() == 2


def test_import_of_a_file_that_is_neither_says_so(db):
    with pytest.raises(CalendarImportError, match="header row"):
        calendar_import(name="x.csv", content=b"foo,bar\n1,2\n")
    with pytest.raises(CalendarImportError, match="No VEVENT"):
        calendar_import(name="x.ics", content=b"BEGIN:VCALENDAR\nEND:VCALENDAR\n")


def test_daily_loss_sweep_flattens_when_the_loss_is_reached_between_signals(account, broker, owner):
    from risk.services import daily_loss_sweep

    assert entry(account, "AAA", qty="10", price="100").status == Execution.Status.FILLED
    rules(owner, max_daily_loss=D("150"), flatten_on_daily_loss=True)
    assert daily_loss_sweep() == 0  # no loss yet

    Position.objects.filter(symbol="AAA").update(last_price=D("84"))  # -160 open
    assert daily_loss_sweep() == 1
    daily_loss_sweep()  # the next beat finds the close in flight and does not create another
    assert Execution.objects.filter(kind="close").count() == 1
    run(Execution.objects.get(kind="close"))
    assert not Position.objects.filter(status=Position.Status.OPEN).exists()


def test_daily_loss_sweep_leaves_users_without_flatten_alone(account, broker, owner):
    from risk.services import daily_loss_sweep

    entry(account, "AAA", qty="10", price="100")
    rules(owner, max_daily_loss=D("150"), flatten_on_daily_loss=False)
    Position.objects.filter(symbol="AAA").update(last_price=D("50"))
    assert daily_loss_sweep() == 0 and not Execution.objects.filter(kind="close").exists()


def test_a_rejection_is_shown_on_the_alerts_webhook_log_row(client, paper, django_capture_on_commit_callbacks):
    account, key = paper
    rules(account.owner, max_trades_per_day=0)
    body = '{"version": "unify.v1", "intent": {"side": "buy", "symbol": "BTCUSDT", "qty": 1, "price": 100}}'
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(f"/api/v1/webhooks/{key}", data=body, content_type="text/plain")
    assert answer.status_code == 202
    log = WebhookLog.objects.get(signal_id=answer.json()["signal_id"])
    assert log.status == 202 and log.error.startswith("Rejected: Daily trade limit reached: 0 trades")


def test_max_position_value_applies_to_an_alert_without_a_price_on_the_planned_order(owner, paper):
    from brokers.adapters.paper import quote_set

    account, _ = paper
    rules(owner, max_position_value=D("500"), max_trades_per_day=5)
    quote_set(broker="paper", symbol="NIFTYBEES", price=D("100"))

    too_big = run(signal_execution(account, unify("buy", symbol="NIFTYBEES", qty="10", price=None)))

    assert (too_big.status, too_big.reason_code) == ("rejected", "max_position_value")
    assert too_big.reason.startswith("Position value ") and "over the limit of" in too_big.reason
    assert not too_big.orders.exists() and not Position.objects.filter(account=account).exists()
    assert not RiskAdmission.objects.filter(execution=too_big).exists()  # the refused trade uses no daily slot
    within = run(signal_execution(account, unify("buy", symbol="NIFTYBEES", qty="4", price=None)))
    assert within.status == Execution.Status.FILLED, within.reason
    assert Position.objects.get(account=account).qty == 4
