"""Emergency Stop, square-off-all, the paper → live switch, the risk pages and the admin switches."""

from __future__ import annotations

from decimal import Decimal

import pytest
from allauth.mfa.models import Authenticator

from accounts.models import AuditLog
from brokers.adapters.base import BrokerRejected, BrokerTransient
from brokers.models import BrokerAccount, Execution, Position
from risk.models import CalendarEvent, RiskConfig, TradingHalt
from risk.selectors import trading_halted
from risk.stops import emergency_stop
from tests import factories
from tests.test_execution import FakeAdapter, FakeBroker, run, signal_execution, unify

D = Decimal


@pytest.fixture
def brokers(monkeypatch) -> dict[int, FakeBroker]:
    """One scripted broker per account, so one of them can fail."""
    books: dict[int, FakeBroker] = {}
    monkeypatch.setattr("brokers.services.execution.get_adapter",
                        lambda account: FakeAdapter(account, books.setdefault(account.pk, FakeBroker())))
    return books


@pytest.fixture
def two_accounts(owner, brokers):
    """Two paper accounts with three open positions: BTCUSDT, ETHUSDT on the first; SOLUSDT on the second."""
    first = factories.paper_account(owner=owner, label="Alpha")[0]
    second = factories.paper_account(owner=owner, label="Beta")[0]
    for account, symbol in ((first, "BTCUSDT"), (first, "ETHUSDT"), (second, "SOLUSDT")):
        assert run(signal_execution(account, unify("buy", symbol=symbol, qty="2", price="100"))).status == "filled"
    for book in brokers.values():
        book.prices = {"BTCUSDT": D("110"), "ETHUSDT": D("90"), "SOLUSDT": D("105")}
    return first, second


def open_symbols(user) -> set[str]:
    return set(Position.objects.filter(account__owner=user, status="open").values_list("symbol", flat=True))


def test_emergency_stop_closes_everything_disables_accounts_and_audits(owner, two_accounts):
    result = emergency_stop(user=owner)

    assert result == {"positions_closed": 3, "total_pnl": D("10"), "errors": []}  # +20 -20 +10 at the fill prices
    assert open_symbols(owner) == set()
    assert not BrokerAccount.objects.filter(owner=owner, enabled=True).exists()
    audit = AuditLog.objects.get(action="risk.emergency_stop")
    assert audit.user == owner and audit.details["positions_closed"] == 3
    assert sorted(audit.details["accounts_disabled"]) == ["Alpha", "Beta"]


def test_a_failing_broker_is_reported_the_others_close_and_a_second_stop_retries(owner, two_accounts, brokers):
    first, second = two_accounts
    brokers[second.pk].script = [BrokerRejected("Market closed for SOLUSDT")]

    result = emergency_stop(user=owner)

    assert result["positions_closed"] == 2
    assert result["errors"] == ["Failed to close SOLUSDT on Beta: Emergency Stop. Close order (sell 2 SOLUSDT) "
                                "failed: Market closed for SOLUSDT"]
    assert open_symbols(owner) == {"SOLUSDT"}
    assert not BrokerAccount.objects.filter(owner=owner, enabled=True).exists()  # still disabled

    again = emergency_stop(user=owner)  # the broker is back: pressing again closes what is left
    assert again["positions_closed"] == 1 and again["errors"] == []
    assert open_symbols(owner) == set()


def test_a_broker_that_does_not_answer_is_reported_and_left_to_the_retry_path(owner, two_accounts, brokers):
    _, second = two_accounts
    brokers[second.pk].script = [BrokerTransient("HTTP 503")]

    result = emergency_stop(user=owner)

    assert result["positions_closed"] == 2
    assert result["errors"] == ["Failed to close SOLUSDT on Beta: HTTP 503; TradeFlow keeps retrying the close"]
    pending = Execution.objects.get(kind=Execution.Kind.CLOSE, account=second)
    assert pending.status == Execution.Status.PENDING  # the task's retries and the sweeper pick it up
    assert run(pending).status == Execution.Status.FILLED
    assert open_symbols(owner) == set()


def test_square_off_all_closes_but_keeps_accounts_enabled(owner_client, owner, two_accounts):
    response = owner_client.post("/positions/square-off-all/", HTTP_ACCEPT="application/json")

    assert response.json() == {"positions_closed": 3, "total_pnl": "10.0000", "errors": []}
    assert open_symbols(owner) == set()
    assert BrokerAccount.objects.filter(owner=owner, enabled=True).count() == 2
    assert AuditLog.objects.filter(action="risk.square_off_all").exists()


def test_dashboard_button_runs_the_emergency_stop_and_shows_the_summary(owner_client, owner, two_accounts):
    page = owner_client.get("/").content.decode()
    assert 'action="/emergency-stop/"' in page and "close ALL open positions" in page

    response = owner_client.post("/emergency-stop/", follow=True)
    text = response.content.decode()
    assert "Emergency stop executed. 3 position(s) closed, total P&amp;L 10.00." in text
    assert open_symbols(owner) == set()


def test_emergency_stop_json_answer_and_get_is_refused(owner_client, owner, two_accounts):
    assert owner_client.get("/emergency-stop/").status_code == 405
    response = owner_client.post("/emergency-stop/", HTTP_ACCEPT="application/json")
    assert set(response.json()) == {"positions_closed", "total_pnl", "errors"}


def test_stops_touch_only_the_callers_own_positions(client, other, owner, two_accounts):
    client.force_login(other)
    assert client.post("/emergency-stop/", HTTP_ACCEPT="application/json").json()["positions_closed"] == 0
    assert client.post("/positions/square-off-all/", HTTP_ACCEPT="application/json").json()["positions_closed"] == 0
    assert open_symbols(owner) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    assert BrokerAccount.objects.filter(owner=owner, enabled=True).count() == 2


def test_pages_need_a_login(client):
    for url in ("/settings/risk/", "/emergency-stop/", "/positions/square-off-all/", "/brokers/1/mode/"):
        response = client.post(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# --- paper first ---------------------------------------------------------------------------------------------


@pytest.fixture
def kite(owner):
    return factories.kite_account(owner=owner, mode="paper", access_token="tok")


def mfa(user) -> None:
    Authenticator.objects.create(user=user, type=Authenticator.Type.TOTP, data={"secret": "x"})


def switch(client, account, **data):
    return client.post(f"/brokers/{account.pk}/mode/", {"mode": "live", **data}, follow=True)


def test_live_switch_refused_while_live_trading_is_off_on_the_server(owner_client, owner, kite, settings):
    settings.LIVE_TRADING_ENABLED = False
    mfa(owner)
    page = switch(owner_client, kite, confirm="on").content.decode()
    assert "Live trading is switched off on this server" in page
    kite.refresh_from_db()
    assert kite.mode == "paper"


def test_live_switch_refused_without_mfa_or_without_confirmation(owner_client, owner, kite, settings):
    settings.LIVE_TRADING_ENABLED = True
    assert "Turn on two-factor authentication" in switch(owner_client, kite, confirm="on").content.decode()
    mfa(owner)
    assert "Tick the confirmation" in switch(owner_client, kite).content.decode()
    kite.refresh_from_db()
    assert kite.mode == "paper" and not AuditLog.objects.filter(action="account.live").exists()


def test_live_switch_with_mfa_server_switch_and_confirmation_is_audited(owner_client, owner, kite, settings):
    settings.LIVE_TRADING_ENABLED = True
    mfa(owner)
    assert "is now LIVE" in switch(owner_client, kite, confirm="on").content.decode()
    kite.refresh_from_db()
    assert kite.mode == "live"
    assert AuditLog.objects.get(action="account.live").actor == owner

    owner_client.post(f"/brokers/{kite.pk}/mode/", {"mode": "paper"})
    kite.refresh_from_db()
    assert kite.mode == "paper"


def test_paper_broker_has_no_live_mode(owner_client, owner, paper, settings):
    settings.LIVE_TRADING_ENABLED = True
    mfa(owner)
    assert "no live mode" in switch(owner_client, paper[0], confirm="on").content.decode()


def test_another_customer_cannot_switch_someone_elses_account(client, other, kite, settings):
    settings.LIVE_TRADING_ENABLED = True
    mfa(other)
    client.force_login(other)
    assert client.post(f"/brokers/{kite.pk}/mode/", {"mode": "live", "confirm": "on"}).status_code == 404
    kite.refresh_from_db()
    assert kite.mode == "paper"


# --- risk settings page ----------------------------------------------------------------------------------------


def test_risk_settings_page_saves_the_rules(owner_client, owner):
    assert owner_client.get("/settings/risk/").status_code == 200
    data = {"enabled": "on", "max_daily_loss": "2000", "max_trades_per_day": "10", "max_open_positions": "5",
            "trading_hours_enabled": "on", "trading_hours_start": "09:15", "trading_hours_end": "15:30",
            "trading_hours_timezone": "Asia/Kolkata", "trading_days": "0, 1,2,3,4", "denied_instruments": "BTCUSDT",
            "news_minutes_before": "5", "news_minutes_after": "5"}
    response = owner_client.post("/settings/risk/", data, follow=True)
    assert "Risk rules saved" in response.content.decode()
    config = RiskConfig.objects.get(user=owner)
    assert (config.max_daily_loss, config.max_trades_per_day, config.trading_days) == (D("2000"), 10, "0,1,2,3,4")
    assert AuditLog.objects.filter(user=owner, action="risk.config_updated").exists()


def test_risk_settings_reject_bad_weekdays(owner_client, owner):
    response = owner_client.post("/settings/risk/", {"trading_days": "Mon", "trading_hours_start": "09:15",
                                                     "trading_hours_end": "15:30", "trading_hours_timezone": "UTC",
                                                     "news_minutes_before": "5", "news_minutes_after": "5"})
    assert "Use weekday numbers 0 (Monday) to 6 (Sunday)" in response.content.decode()


# --- admin -----------------------------------------------------------------------------------------------------


def test_admin_kill_switch_actions_turn_trading_off_and_on(client, admin_user):
    client.force_login(admin_user)
    url = "/admin/risk/tradinghalt/"
    assert "Kill switch is off" in client.get(url).content.decode()

    client.post(url, {"action": "halt_trading", "index": 0})
    assert trading_halted()
    assert "Kill switch is ON" in client.get(url).content.decode()
    client.post(url, {"action": "resume_trading", "index": 0, "_selected_action": [TradingHalt.objects.first().pk]})
    assert not trading_halted()
    assert list(AuditLog.objects.values_list("action", flat=True).order_by("pk")) == [
        "trading.halted", "trading.resumed"]


def test_admin_emergency_stop_action_on_a_user(client, admin_user, owner, two_accounts):
    client.force_login(admin_user)
    response = client.post("/admin/accounts/user/", {"action": "emergency_stop_action",
                                                     "_selected_action": [owner.pk]}, follow=True)
    assert "Emergency Stop: 3 position(s) closed" in response.content.decode()
    assert open_symbols(owner) == set()
    assert AuditLog.objects.get(action="risk.emergency_stop").actor == admin_user


def test_admin_calendar_import(client, admin_user):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(admin_user)
    upload = SimpleUploadedFile("w.csv", b"time,market,impact,title\n2026-03-11T12:30:00Z,USD,high,US CPI\n")
    response = client.post("/admin/risk/calendarevent/import/", {"file": upload}, follow=True)
    assert "1 event(s) created" in response.content.decode()
    assert CalendarEvent.objects.get().title == "US CPI"


def test_dashboard_says_when_trading_is_halted(owner_client):
    from risk.services import trading_halt_set

    assert 'data-testid="halted"' not in owner_client.get("/").content.decode()
    trading_halt_set(halted=True, reason="maintenance")
    assert "Trading is halted by the operator" in owner_client.get("/").content.decode()


def test_emergency_stop_still_closes_while_trading_is_halted(owner, two_accounts):
    from risk.services import trading_halt_set

    trading_halt_set(halted=True, reason="exchange outage")
    assert emergency_stop(user=owner)["positions_closed"] == 3
    assert open_symbols(owner) == set()


def test_account_page_offers_the_live_switch_for_real_brokers_only(owner_client, kite, paper):
    assert "Switch to live" in owner_client.get(f"/brokers/{kite.pk}/").content.decode()
    assert "Switch to live" not in owner_client.get(f"/brokers/{paper[0].pk}/").content.decode()


def test_positions_page_has_the_square_off_all_button(owner_client):
    assert 'action="/positions/square-off-all/"' in owner_client.get("/positions/").content.decode()
