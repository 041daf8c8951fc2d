"""Kite instruments sync, option contract resolution across expiries and lot-size changes, freeze split."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kiteconnect import KiteConnect

from brokers.adapters.base import BrokerAuthError, BrokerRejected, OrderRequest
from brokers.adapters.kite import KiteAdapter
from brokers.models import BrokerAccount, Instrument
from brokers.services import account_create
from brokers.services.instruments import (
    FreezeSplitError,
    InstrumentNotFound,
    freeze_split,
    instruments_sync_kite,
    option_resolve,
    resolve_memo,
)
from tests.protocol.kite_server import KiteServer


@pytest.fixture
def kite_server():
    with KiteServer() as server:
        yield server


def sync(server: KiteServer, **kwargs):
    client = KiteConnect(server.api_key, access_token=server.grant_access_token(), root=server.url)
    return instruments_sync_kite(adapter_or_client=client, today=server.today, **kwargs)


def kite_account(owner, server: KiteServer, **fields) -> BrokerAccount:
    account, _ = account_create(owner=owner, label="Zerodha", broker="kite", mode="live", api_key=server.api_key,
                                **fields)
    return account


def listed(server: KiteServer, name: str, expiry: str, strike: int, option_type: str) -> dict:
    """The row the exchange lists, found by its fields (tests do not spell symbols either)."""
    return next(r for r in server.instruments if r["name"] == name and r["expiry"] == expiry
                and r["strike"] == strike and r["instrument_type"] == option_type)


# --- sync ------------------------------------------------------------------------------------------------

def test_sync_stores_each_contract_with_the_files_lot_tick_expiry_and_strike(db, kite_server):
    result = sync(kite_server)

    live = [r for r in kite_server.instruments if r["exchange"] == "NFO" and r["expiry"] >= "2025-12-24"]
    assert result.rows == {"NFO": len([r for r in kite_server.instruments if r["exchange"] == "NFO"]), "NSE": 2}
    assert Instrument.objects.filter(broker="kite", exchange="NFO").count() == len(live)
    dec = Instrument.objects.get(tradingsymbol=listed(kite_server, "NIFTY", "2025-12-30", 25000, "PE")["tradingsymbol"])
    assert (dec.expiry, dec.strike, dec.lot_size, dec.tick_size) == (date(2025, 12, 30), 25000, 75, Decimal("0.05"))
    assert (dec.name, dec.instrument_type, dec.segment, dec.freeze_qty) == ("NIFTY", "PE", "NFO-OPT", 1800)
    jan = Instrument.objects.get(tradingsymbol=listed(kite_server, "NIFTY", "2026-01-06", 25000, "PE")["tradingsymbol"])
    assert jan.lot_size == 65
    equity = Instrument.objects.get(exchange="NSE", tradingsymbol="RELIANCE")
    assert (equity.expiry, equity.strike, equity.lot_size, equity.freeze_qty) == (None, None, 1, None)


def test_sync_through_the_adapter_fetches_the_gzipped_dump_per_exchange(owner, kite_server, settings):
    settings.KITE_API_ROOT = kite_server.url
    account = kite_account(owner, kite_server, access_token=kite_server.grant_access_token())
    instruments_sync_kite(adapter_or_client=KiteAdapter(account), exchanges=("NSE",), today=kite_server.today)
    assert [r.path for r in kite_server.requests] == ["/instruments/NSE"]
    assert "gzip" in kite_server.requests[0].headers["Accept-Encoding"]
    assert Instrument.objects.filter(broker="kite").count() == 2


def test_sync_with_a_dead_session_fails_and_changes_nothing(owner, kite_server, settings):
    settings.KITE_API_ROOT = kite_server.url
    sync(kite_server)
    count = Instrument.objects.count()
    account = kite_account(owner, kite_server, access_token=kite_server.grant_access_token())
    kite_server.expire_tokens()
    with pytest.raises(BrokerAuthError):
        instruments_sync_kite(adapter_or_client=KiteAdapter(account), today=kite_server.today)
    assert Instrument.objects.count() == count


def test_sync_removes_expired_and_delisted_contracts_but_not_other_brokers(db, kite_server):
    Instrument.objects.create(broker="kite", exchange="NFO", tradingsymbol="NIFTY25N2525000PE", name="NIFTY",
                              instrument_type="PE", expiry=date(2025, 11, 25), strike=25000, lot_size=75)
    Instrument.objects.create(broker="kite", exchange="NFO", tradingsymbol="DELISTED26JANFUT", name="DELISTED",
                              instrument_type="FUT", expiry=date(2026, 1, 27), lot_size=100)
    Instrument.objects.create(broker="kite", exchange="BSE", tradingsymbol="RELIANCE", lot_size=1)
    Instrument.objects.create(broker="binance", exchange="BINANCE", tradingsymbol="BTCUSDT", lot_size=1)

    result = sync(kite_server)

    assert result.deleted == 2
    assert not Instrument.objects.filter(tradingsymbol__in=["NIFTY25N2525000PE", "DELISTED26JANFUT"]).exists()
    assert Instrument.objects.filter(broker="kite", exchange="BSE").exists()  # not an exchange we synced
    assert Instrument.objects.filter(broker="binance").exists()
    assert not Instrument.objects.filter(broker="kite", expiry__lt=kite_server.today).exists()


def test_a_resync_updates_rows_in_place(db, kite_server):
    sync(kite_server)
    count = Instrument.objects.count()
    row = listed(kite_server, "NIFTY", "2026-02-24", 25000, "CE")
    row["lot_size"] = 60  # the exchange revised the lot size of a far contract
    sync(kite_server)
    assert Instrument.objects.count() == count
    assert Instrument.objects.get(tradingsymbol=row["tradingsymbol"]).lot_size == 60


def test_an_empty_download_leaves_the_table_alone(db, kite_server):
    sync(kite_server)
    count = Instrument.objects.count()
    kite_server.set_instruments([])
    result = sync(kite_server)
    assert result.rows == {"NFO": 0, "NSE": 0} and result.deleted == 0
    assert Instrument.objects.count() == count


# --- resolution ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("on_date", "rule", "expiry", "lot_size"), [
    (date(2025, 12, 24), "nearest_weekly", "2025-12-30", 75),
    (date(2025, 12, 30), "nearest_weekly", "2025-12-30", 75),  # expiry day: still this week's contract
    (date(2025, 12, 31), "nearest_weekly", "2026-01-06", 65),  # rolled over, and the new lot size
    (date(2026, 1, 7), "nearest_weekly", "2026-01-13", 65),
    (date(2025, 12, 24), "nearest_monthly", "2025-12-30", 75),
    (date(2025, 12, 31), "nearest_monthly", "2026-01-27", 65),
    (date(2026, 1, 28), "nearest_monthly", "2026-02-24", 65),
])
def test_option_resolution_across_the_rollover(db, kite_server, on_date, rule, expiry, lot_size):
    sync(kite_server)
    contract = option_resolve(underlying="NIFTY", strike=25000, option_type="PE", on_date=on_date, expiry_rule=rule)
    assert contract.tradingsymbol == listed(kite_server, "NIFTY", expiry, 25000, "PE")["tradingsymbol"]
    assert (contract.expiry.isoformat(), contract.lot_size, contract.exchange) == (expiry, lot_size, "NFO")


def test_rolling_before_expiry_day(db, kite_server):
    sync(kite_server)
    contract = option_resolve(underlying="nifty", strike="24500", option_type="ce", on_date=date(2025, 12, 30),
                              min_days_to_expiry=1)
    assert (contract.expiry, contract.strike, contract.instrument_type) == (date(2026, 1, 6), 24500, "CE")


def test_an_underlying_with_only_monthlies_resolves_to_its_monthly(db, kite_server):
    sync(kite_server)
    contract = option_resolve(underlying="BANKNIFTY", strike=57000, option_type="CE", on_date=date(2025, 12, 31))
    assert (contract.expiry, contract.lot_size) == (date(2026, 1, 27), 35)


def test_a_strike_not_listed_is_an_error_naming_strike_and_expiry(db, kite_server):
    sync(kite_server)
    with pytest.raises(InstrumentNotFound, match="NIFTY 25050 PE is not listed for the 2025-12-30 expiry"):
        option_resolve(underlying="NIFTY", strike=25050, option_type="PE", on_date=date(2025, 12, 24))


def test_nothing_synced_is_an_error_that_says_to_sync(db):
    with pytest.raises(InstrumentNotFound, match="run the instruments sync"):
        option_resolve(underlying="NIFTY", strike=25000, option_type="PE", on_date=date(2025, 12, 24))


def test_inside_a_memo_each_expiry_and_contract_is_read_once_and_nothing_outlives_it(db, kite_server):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def resolve(strike):
        return option_resolve(underlying="NIFTY", strike=strike, option_type="PE", on_date=date(2025, 12, 24))

    with resolve_memo():  # nothing synced yet: the not-found answer is remembered for the block
        with CaptureQueriesContext(connection) as queries:
            for strike in (25000, 25000, 24800):
                with pytest.raises(InstrumentNotFound, match="run the instruments sync"):
                    resolve(strike)
        assert len(queries) == 1  # the expiries, once for the three
    sync(kite_server)
    with resolve_memo():
        with CaptureQueriesContext(connection) as queries:
            found = [resolve(strike) for strike in (25000, 24800, 25000, 24800)]
            with pytest.raises(InstrumentNotFound, match="NIFTY 25050 PE is not listed"):
                resolve(25050)
        assert len(queries) == 4  # the expiry once, then each contract once (the unlisted one too)
        assert found[0] == found[2] and found[1] == found[3] and found[0].strike == 25000
    with CaptureQueriesContext(connection) as queries:  # outside a memo every call reads the table
        assert resolve(25000) == found[0] and resolve(25000) == found[0]
    assert len(queries) == 4


def test_the_resolved_lot_size_is_what_kite_accepts(owner, kite_server, settings):
    """lots × the row's lot size goes through; a remembered 75 on a 2026 contract is refused by Kite."""
    settings.KITE_API_ROOT = kite_server.url
    sync(kite_server)
    contract = option_resolve(underlying="NIFTY", strike=25000, option_type="PE", on_date=date(2025, 12, 31))
    adapter = KiteAdapter(kite_account(owner, kite_server, access_token=kite_server.grant_access_token()))
    lots = 3
    ok = adapter.place_order(OrderRequest(client_order_id="TF1M", symbol=f"NFO:{contract.tradingsymbol}",
                                          side="sell", qty=lots * contract.lot_size))
    assert (ok.status, ok.filled_qty) == ("filled", 195)
    with pytest.raises(BrokerRejected, match=r"multiple of lot size \(65\)"):
        adapter.place_order(OrderRequest(client_order_id="TF2M", symbol=f"NFO:{contract.tradingsymbol}",
                                         side="sell", qty=Decimal(lots * 75)))


# --- freeze split ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("qty", "lot", "freeze", "expected"), [
    (75, 75, 1800, [75]),
    (1800, 75, 1800, [1800]),
    (3000, 75, 1800, [1800, 1200]),
    (3900, 65, 1800, [1755, 1755, 390]),  # 1800 is not a multiple of 65: 27 lots a slice
    (18000, 75, 1800, [1800] * 10),
    (600, 75, None, [600]),
])
def test_freeze_split(qty, lot, freeze, expected):
    assert freeze_split(qty, lot, freeze) == expected


@pytest.mark.parametrize(("qty", "lot", "freeze", "message"), [
    (18075, 75, 1800, "needs 11 orders of at most 1800"),
    (100, 75, 1800, "not a multiple of the lot size 75"),
    (150, 75, 50, "smaller than one lot"),
    (0, 75, 1800, "Cannot split"),
])
def test_freeze_split_refuses_clearly(qty, lot, freeze, message):
    with pytest.raises(FreezeSplitError, match=message):
        freeze_split(qty, lot, freeze)


@given(lots=st.integers(1, 400), lot=st.sampled_from([15, 25, 30, 35, 65, 75, 500]),
       freeze=st.integers(1, 5000))
def test_freeze_split_slices_are_valid_orders(lots, lot, freeze):
    qty = lots * lot
    try:
        slices = freeze_split(qty, lot, freeze)
    except FreezeSplitError:
        assert freeze < lot or -(-qty // ((freeze // lot) * lot)) > 10
        return
    assert sum(slices) == qty and len(slices) <= 10
    assert all(s % lot == 0 and 0 < s <= freeze for s in slices)
