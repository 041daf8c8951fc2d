"""The pure risk rules: ``entry_decide`` and its helpers, with property tests for the limits."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from risk.models import RiskConfig
from risk.rules import Counters, NewsEvent, entry_decide, money, within_hours

D = Decimal
NOW = datetime(2026, 3, 4, 6, 0, tzinfo=UTC)  # Wednesday 11:30 in Asia/Kolkata


def config(**fields) -> RiskConfig:
    return RiskConfig(**fields)  # unsaved: the rules never touch the database


def entry(symbol: str = "BTCUSDT", qty: str | None = "1", price: str | None = "100") -> dict:
    return {"action": "entry", "side": "buy", "symbol": symbol, "qty": qty, "price": price}


def test_nothing_configured_allows():
    assert entry_decide(config(), Counters(), entry(), NOW).allowed


def test_disabled_config_skips_every_rule():
    cfg = config(enabled=False, max_trades_per_day=0, denied_instruments="BTCUSDT")
    assert entry_decide(cfg, Counters(trades_today=99), entry(), NOW).allowed


@pytest.mark.parametrize("fields, counters, intent, code, message", [
    ({"max_daily_loss": D("2000")}, Counters(pnl_today=D("-2000")), entry(), "daily_loss_limit",
     "Daily loss limit reached: ₹2,000"),
    ({"trading_hours_enabled": True, "trading_hours_start": time(9, 15), "trading_hours_end": time(10, 0)},
     Counters(), entry(), "outside_trading_hours", "Outside trading hours: 09:15–10:00 Asia/Kolkata"),
    ({"max_trades_per_day": 10}, Counters(trades_today=10), entry(), "daily_trade_limit",
     "Daily trade limit reached: 10 trades"),
    ({"max_open_positions": 5}, Counters(open_positions=5), entry(), "max_open_positions", "Max open positions: 5"),
    ({"max_position_value": D("100000")}, Counters(), entry(qty="5", price="25000"), "max_position_value",
     "Position value 1,25,000 over the limit of 1,00,000"),
    ({"denied_instruments": "ethusdt, btcusdt"}, Counters(), entry(), "denied_instrument",
     "BTCUSDT is on your denied list"),
    ({"allowed_instruments": "ETHUSDT"}, Counters(), entry(), "instrument_not_allowed",
     "BTCUSDT is not on your allowed list"),
    ({"news_lockout_enabled": True}, Counters(events=[NewsEvent(NOW + timedelta(minutes=3), "US CPI", "USD")]),
     entry(), "news_lockout", "News lockout: US CPI in 3 minutes"),
])
def test_each_rule_rejects_with_a_message_a_trader_understands(fields, counters, intent, code, message):
    decision = entry_decide(config(**fields), counters, intent, NOW)
    assert not decision.allowed
    assert decision.code == code
    assert decision.message.startswith(message)


def test_loss_just_under_the_limit_is_allowed():
    assert entry_decide(config(max_daily_loss=D("2000")), Counters(pnl_today=D("-1999.99")), entry(), NOW).allowed


def test_options_underlying_on_the_denied_list_is_denied():
    intent = {"action": "entry", "symbol": "NIFTY25000PE", "option": {"underlying": "NIFTY"}}
    decision = entry_decide(config(denied_instruments="NIFTY"), Counters(), intent, NOW)
    assert decision.code == "denied_instrument" and "NIFTY" in decision.message


def test_news_lockout_after_the_event_and_outside_the_window():
    cfg = config(news_lockout_enabled=True, news_minutes_before=5, news_minutes_after=10)
    after = Counters(events=[NewsEvent(NOW - timedelta(minutes=7), "FOMC")])
    assert entry_decide(cfg, after, entry(), NOW).message.startswith("News lockout: FOMC 7 minutes ago")
    later = Counters(events=[NewsEvent(NOW - timedelta(minutes=11), "FOMC")])
    assert entry_decide(cfg, later, entry(), NOW).allowed
    early = Counters(events=[NewsEvent(NOW + timedelta(minutes=6), "FOMC")])
    assert entry_decide(cfg, early, entry(), NOW).allowed


@pytest.mark.parametrize("amount, currency, text", [
    (D("2000"), "INR", "₹2,000"), (D("125000"), "INR", "₹1,25,000"), (D("12345678.5"), "INR", "₹1,23,45,678.50"),
    (D("500"), "USD", "$500"), (D("1250.5"), "USDT", "1,250.50 USDT"), (D("-245.5"), "INR", "₹-245.50"),
])
def test_money_is_written_the_way_traders_read_it(amount, currency, text):
    assert money(amount, currency) == text


# --- trading hours: timezones, midnight, DST -------------------------------------------------------------------

NSE = {"start": time(9, 15), "end": time(15, 30), "tz": "Asia/Kolkata", "days": range(5)}


@pytest.mark.parametrize("utc, inside", [
    (datetime(2026, 3, 4, 3, 44, tzinfo=UTC), False),  # 09:14 IST
    (datetime(2026, 3, 4, 3, 45, tzinfo=UTC), True),  # 09:15 IST
    (datetime(2026, 3, 4, 9, 59, tzinfo=UTC), True),  # 15:29 IST
    (datetime(2026, 3, 4, 10, 0, tzinfo=UTC), False),  # 15:30 IST: the session is over
    (datetime(2026, 3, 7, 6, 0, tzinfo=UTC), False),  # Saturday
    (datetime(2026, 3, 8, 20, 0, tzinfo=UTC), False),  # Sunday 20:00 UTC is Monday 01:30 IST: not open yet
    (datetime(2026, 3, 9, 4, 0, tzinfo=UTC), True),  # Monday 09:30 IST
])
def test_nse_session_in_ist(utc, inside):
    assert within_hours(utc, **NSE) is inside


def test_session_across_midnight_belongs_to_the_day_it_started():
    crypto = {"start": time(22, 0), "end": time(2, 0), "tz": "UTC", "days": [4]}  # Friday night session
    assert within_hours(datetime(2026, 3, 6, 23, 0, tzinfo=UTC), **crypto)  # Friday 23:00
    assert within_hours(datetime(2026, 3, 7, 1, 30, tzinfo=UTC), **crypto)  # Saturday 01:30: still Friday's
    assert not within_hours(datetime(2026, 3, 7, 2, 0, tzinfo=UTC), **crypto)
    assert not within_hours(datetime(2026, 3, 7, 23, 0, tzinfo=UTC), **crypto)  # Saturday night: no session
    assert not within_hours(datetime(2026, 3, 6, 1, 0, tzinfo=UTC), **crypto)  # Friday 01:00 is Thursday's


def test_new_york_session_follows_daylight_saving():
    nyse = {"start": time(9, 30), "end": time(16, 0), "tz": "America/New_York", "days": range(5)}
    # 13:45 UTC is 09:45 EDT in summer (open) but 08:45 EST in winter (closed).
    assert within_hours(datetime(2026, 7, 15, 13, 45, tzinfo=UTC), **nyse)
    assert not within_hours(datetime(2026, 1, 14, 13, 45, tzinfo=UTC), **nyse)
    # The Monday after the March 8 2026 switch: 13:30 UTC is 09:30 EDT.
    assert within_hours(datetime(2026, 3, 9, 13, 30, tzinfo=UTC), **nyse)
    # The Friday before it: 13:30 UTC is 08:30 EST (closed), 14:30 UTC is 09:30 EST (open).
    assert not within_hours(datetime(2026, 3, 6, 13, 30, tzinfo=UTC), **nyse)
    assert within_hours(datetime(2026, 3, 6, 14, 30, tzinfo=UTC), **nyse)


# --- properties --------------------------------------------------------------------------------------------------

limits = st.one_of(st.none(), st.integers(min_value=0, max_value=50))
money_limits = st.one_of(st.none(), st.decimals(min_value=0, max_value=10**7, places=2))


@given(max_trades=limits, max_open=limits, max_loss=money_limits, max_value=money_limits,
       trades=st.integers(0, 60), open_=st.integers(0, 60),
       pnl=st.decimals(min_value=-10**7, max_value=10**7, places=2),
       qty=st.decimals(min_value=D("0.01"), max_value=1000, places=2),
       price=st.decimals(min_value=D("0.01"), max_value=10**5, places=2))
def test_an_allowed_entry_never_takes_a_counter_past_its_limit(max_trades, max_open, max_loss, max_value, trades,
                                                               open_, pnl, qty, price):
    cfg = config(max_trades_per_day=max_trades, max_open_positions=max_open, max_daily_loss=max_loss,
                 max_position_value=max_value)
    decision = entry_decide(cfg, Counters(pnl_today=pnl, trades_today=trades, open_positions=open_),
                            entry(qty=str(qty), price=str(price)), NOW)
    if decision.allowed:
        assert max_trades is None or trades + 1 <= max_trades
        assert max_open is None or open_ + 1 <= max_open
        assert max_loss is None or pnl > -max_loss
        assert max_value is None or qty * price <= max_value
    else:
        assert decision.code and decision.message


@given(max_trades=st.integers(0, 30), signals=st.integers(0, 60))
def test_taking_signals_one_by_one_admits_exactly_the_limit(max_trades, signals):
    cfg, admitted = config(max_trades_per_day=max_trades), 0
    for _ in range(signals):
        if entry_decide(cfg, Counters(trades_today=admitted), entry(), NOW).allowed:
            admitted += 1
    assert admitted == min(max_trades, signals)


@given(minutes=st.integers(-24 * 60, 24 * 60))
def test_a_zero_length_session_means_all_day_on_trading_days(minutes):
    moment = NOW + timedelta(minutes=minutes)
    inside = within_hours(moment, start=time(0, 0), end=time(0, 0), tz="Asia/Kolkata", days=range(7))
    assert inside
