"""The Kite adapter, with the real ``kiteconnect`` client, against the local Kite Connect server."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection

from brokers.adapters.base import (
    BrokerAmbiguous,
    BrokerAuthError,
    BrokerRejected,
    BrokerTransient,
    OrderRequest,
)
from brokers.adapters.kite import KiteAdapter, kite_login_url, kite_session_exchange, kite_tag
from brokers.models import BrokerAccount
from brokers.services import account_create
from brokers.services.instruments import instruments_sync_kite
from tests.protocol.kite_server import KiteServer

DEC30_PE = "NIFTY25DEC25000PE"  # NIFTY 25000 PE, expiry 2025-12-30 (monthly), lot 75
JAN06_PE = "NIFTY2610625000PE"  # NIFTY 25000 PE, expiry 2026-01-06 (weekly), lot 65


@pytest.fixture
def kite_server():
    with KiteServer() as server:
        yield server


@pytest.fixture(autouse=True)
def kite_settings(settings, kite_server):
    settings.KITE_API_ROOT = kite_server.url
    settings.KITE_FILL_WAIT = 1.0
    settings.KITE_RATE_BACKOFF = 0.05
    return settings


def make_account(owner, server: KiteServer, *, logged_in: bool = True, **options) -> BrokerAccount:
    account, _ = account_create(owner=owner, label="Zerodha", broker="kite", mode="live", api_key=server.api_key,
                                api_secret=server.api_secret, options=options)
    if logged_in:
        account.access_token = server.grant_access_token()
        account.save()
    return account


@pytest.fixture
def account(owner, kite_server):
    return make_account(owner, kite_server)


@pytest.fixture
def synced(account, kite_server):
    return instruments_sync_kite(adapter_or_client=KiteAdapter(account), today=kite_server.today)


def order(cid="TF1M", symbol=f"NFO:{DEC30_PE}", side="sell", qty="75", **kw) -> OrderRequest:
    return OrderRequest(client_order_id=cid, symbol=symbol, side=side, qty=Decimal(qty), **kw)


# --- connect flow ----------------------------------------------------------------------------------------

def test_login_url_is_kites_login_page_for_the_accounts_key(owner, kite_server):
    account = make_account(owner, kite_server, logged_in=False)
    url = kite_login_url(account, state="acct42")
    assert url.startswith("https://kite.zerodha.com/connect/login?api_key=kitetestkey&v=3")
    assert "redirect_params=state%3Dacct42" in url


def test_session_exchange_stores_the_token_encrypted_and_reactivates(owner, kite_server):
    account = make_account(owner, kite_server, logged_in=False)
    BrokerAccount.objects.filter(pk=account.pk).update(status="login_needed", status_message="Broker login needed")
    account.refresh_from_db()
    request_token = kite_server.issue_request_token()

    kite_session_exchange(account=account, request_token=request_token)

    post = kite_server.requests_to("/session/token", "POST")[0]
    expected = hashlib.sha256(f"{kite_server.api_key}{request_token}{kite_server.api_secret}".encode()).hexdigest()
    assert post.one("checksum") == expected
    account.refresh_from_db()
    assert account.status == "active" and account.status_message == ""
    assert account.options["user_id"] == "AB1234"
    token = account.access_token
    assert token and kite_server._tokens[token] == kite_server.api_key
    with connection.cursor() as cursor:
        cursor.execute("SELECT access_token, api_secret FROM brokers_brokeraccount WHERE id = %s", [account.pk])
        raw_token, raw_secret = cursor.fetchone()
    assert token not in raw_token and kite_server.api_secret not in raw_secret
    KiteAdapter(account).validate_credentials()  # the stored token works


def test_a_request_token_works_once(owner, kite_server):
    account = make_account(owner, kite_server, logged_in=False)
    request_token = kite_server.issue_request_token()
    kite_session_exchange(account=account, request_token=request_token)
    first = account.access_token
    with pytest.raises(BrokerAuthError, match="Kite login failed: Token is invalid or has expired"):
        kite_session_exchange(account=account, request_token=request_token)
    account.refresh_from_db()
    assert account.access_token == first


def test_a_wrong_api_secret_fails_the_checksum(owner, kite_server):
    account = make_account(owner, kite_server, logged_in=False)
    account.api_secret = "not-the-secret"
    with pytest.raises(BrokerAuthError, match="Invalid checksum"):
        kite_session_exchange(account=account, request_token=kite_server.issue_request_token())
    account.refresh_from_db()
    assert account.access_token == ""


def test_an_account_never_logged_in_is_told_to_log_in_without_calling_kite(owner, kite_server):
    account = make_account(owner, kite_server, logged_in=False)
    with pytest.raises(BrokerAuthError, match="log in to Kite"):
        KiteAdapter(account).place_order(order())
    assert kite_server.requests == []


def test_token_expiry_mid_day_is_an_auth_error(account, kite_server):
    adapter = KiteAdapter(account)
    assert adapter.place_order(order(cid="TF1M")).status == "filled"
    kite_server.expire_tokens()
    with pytest.raises(BrokerAuthError) as excinfo:
        adapter.place_order(order(cid="TF2M"))
    assert "Incorrect `api_key` or `access_token`" in excinfo.value.message
    assert "log in to Kite again" in excinfo.value.message
    with pytest.raises(BrokerAuthError):
        adapter.positions()
    assert len(kite_server.orders) == 1


# --- placing orders -------------------------------------------------------------------------------------

def test_market_order_carries_market_protection_tag_product_and_kite_headers(account, kite_server):
    kite_server.set_ltp(f"NFO:{DEC30_PE}", "182.35")
    result = KiteAdapter(account).place_order(order(cid="TF17M", qty="150"))

    assert (result.status, result.filled_qty, result.avg_price) == ("filled", 150, Decimal("182.35"))
    post = kite_server.order_posts()[0]
    assert post.path == "/orders/regular"
    assert post.headers["X-Kite-Version"] == "3"
    assert post.headers["Authorization"] == f"token {account.api_key}:{account.access_token}"
    assert "form-urlencoded" in post.headers["Content-Type"]
    form = {k: v[0] for k, v in post.form.items()}
    assert form == {"exchange": "NFO", "tradingsymbol": DEC30_PE, "transaction_type": "SELL", "quantity": "150",
                    "product": "NRML", "order_type": "MARKET", "validity": "DAY", "tag": "TF17M",
                    "market_protection": "-1", "variety": "regular"}
    assert result.broker_order_id == kite_server.tagged("TF17M")[0]["order_id"]


def test_product_variety_and_protection_come_from_the_account(owner, kite_server):
    account = make_account(owner, kite_server, product="MIS", market_protection=3)
    KiteAdapter(account).place_order(order())
    form = kite_server.order_posts()[0].form
    assert (form["product"], form["market_protection"]) == (["MIS"], ["3"])


def test_a_limit_order_sends_its_price_and_no_market_protection(account, kite_server):
    kite_server.set_ltp(f"NFO:{DEC30_PE}", "90")
    adapter = KiteAdapter(account)
    result = adapter.place_order(order(side="buy", order_type="limit", price=Decimal("95.50")))
    form = kite_server.order_posts()[0].form
    assert form["order_type"] == ["LIMIT"] and form["price"] == ["95.50"] and "market_protection" not in form
    assert (result.status, result.avg_price) == ("filled", Decimal("90"))
    resting = adapter.place_order(order(cid="TF2M", side="buy", order_type="limit", price=Decimal("80")))
    assert resting.status == "open"


def test_a_bare_symbol_finds_its_exchange_in_the_instruments(account, kite_server, synced):
    KiteAdapter(account).place_order(order(symbol=JAN06_PE, qty="65"))
    assert kite_server.order_posts()[0].form["exchange"] == ["NFO"]


@pytest.mark.parametrize(("request_kwargs", "message"), [
    ({"qty": "70"}, "Quantity should be a multiple of lot size (75)"),
    ({"symbol": "NFO:RELIANCE25DEC1500CE", "qty": "500"}, "Market orders are blocked for stock options"),
    ({"symbol": "NFO:NIFTY25D2325000PE"}, "has either expired or does not exist"),
    ({"symbol": "NFO:NIFTY25DEC25000XE"}, "has either expired or does not exist"),
    ({"qty": "1875", "extra": {"freeze_qty": None}}, "exceeds the freeze limit of 1800"),
])
def test_kites_rejections_reach_the_customer_with_kites_message(account, kite_server, request_kwargs, message):
    with pytest.raises(BrokerRejected, match=re.escape(message)):
        KiteAdapter(account).place_order(order(**request_kwargs))
    assert kite_server.orders == []


def test_market_protection_cannot_be_configured_away(owner, kite_server):
    account = make_account(owner, kite_server, market_protection=0)
    with pytest.raises(BrokerRejected, match="without market protection are not allowed"):
        KiteAdapter(account).place_order(order())


def test_an_rms_rejection_after_acceptance_is_reported_with_its_reason(account, kite_server):
    kite_server.reject_next_order("Insufficient funds. Required margin is 95417.84 but available margin is 7.")
    result = KiteAdapter(account).place_order(order())
    assert result.status == "rejected"
    assert result.reject_reason.startswith("Insufficient funds. Required margin is 95417.84")
    assert KiteAdapter(account).order_status(client_order_id="TF1M").status == "rejected"


def test_fractional_quantities_are_refused_before_sending(account, kite_server):
    with pytest.raises(BrokerRejected, match="whole units"):
        KiteAdapter(account).place_order(order(qty="75.5"))
    assert kite_server.requests == []


def test_long_client_ids_become_a_stable_20_character_tag():
    tag = kite_tag("signal-2024-01-01T10:00:00Z-main-leg")
    assert len(tag) == 20 and tag.isalnum() and tag == kite_tag("signal-2024-01-01T10:00:00Z-main-leg")
    assert kite_tag("TF123M") == "TF123M"


# --- ambiguous answers: look up by tag, never resend -----------------------------------------------------

def test_timeout_after_kite_accepted_finds_exactly_one_order_by_tag(owner, kite_server):
    account = make_account(owner, kite_server, timeout=0.5)
    adapter = KiteAdapter(account)
    kite_server.timeout_next_order(seconds=2.0)
    started = time.monotonic()
    with pytest.raises(BrokerAmbiguous):
        adapter.place_order(order(cid="TF9M"))
    assert time.monotonic() - started < 1.5

    found = adapter.order_status(client_order_id="TF9M")
    assert found is not None and (found.status, found.filled_qty) == ("filled", 75)
    assert len(kite_server.order_posts()) == 1
    assert len(kite_server.tagged("TF9M")) == 1


@pytest.mark.parametrize("html", [False, True])
def test_5xx_after_acceptance_is_ambiguous_and_the_order_is_found(account, kite_server, html):
    kite_server.fail_next(status=502 if html else 503, accept=True, html=html)
    adapter = KiteAdapter(account)
    with pytest.raises(BrokerAmbiguous):
        adapter.place_order(order(cid="TF5M"))
    assert adapter.order_status(client_order_id="TF5M").status == "filled"
    assert len(kite_server.order_posts()) == 1


def test_5xx_before_acceptance_is_ambiguous_and_nothing_is_found(account, kite_server):
    kite_server.fail_next(status=500, accept=False)
    adapter = KiteAdapter(account)
    with pytest.raises(BrokerAmbiguous):
        adapter.place_order(order(cid="TF6M"))
    assert adapter.order_status(client_order_id="TF6M") is None


def test_a_5xx_on_a_read_is_transient(account, kite_server):
    kite_server.fail_next(status=503, path_prefix="/portfolio/positions", method="GET")
    with pytest.raises(BrokerTransient):
        KiteAdapter(account).positions()


def test_latency_under_the_timeout_is_only_slow_and_over_it_a_read_is_transient(owner, kite_server):
    adapter = KiteAdapter(make_account(owner, kite_server, timeout=0.5))
    kite_server.add_latency(0.2, path_prefix="/user/margins")
    started = time.monotonic()
    assert adapter.balance().equity == 500000
    assert time.monotonic() - started >= 0.2
    kite_server.add_latency(1.0, path_prefix="/portfolio/positions")
    with pytest.raises(BrokerTransient) as excinfo:
        adapter.positions()
    assert excinfo.value.code == "kite_timeout"


def test_an_unknown_tag_is_not_found(account):
    assert KiteAdapter(account).order_status(client_order_id="TF404M") is None


def test_an_order_still_working_is_open_and_can_be_cancelled(account, kite_server, settings):
    settings.KITE_FILL_WAIT = 0.2
    kite_server.hold_orders = True
    adapter = KiteAdapter(account)
    result = adapter.place_order(order(cid="TF7M"))
    assert result.status == "open" and result.filled_qty == 0
    adapter.cancel_order(client_order_id="TF7M")
    assert adapter.order_status(client_order_id="TF7M").status == "cancelled"
    with pytest.raises(BrokerRejected, match="No open Kite order"):
        adapter.cancel_order(client_order_id="TF7M")


def test_a_fill_that_takes_a_moment_is_waited_for(account, kite_server):
    kite_server.fill_delay = 0.3
    result = KiteAdapter(account).place_order(order())
    assert result.status == "filled" and result.filled_qty == 75


# --- rate limits -------------------------------------------------------------------------------------------

def test_a_single_429_is_retried_after_a_pause(account, kite_server):
    kite_server.throttle_next(1)
    result = KiteAdapter(account).place_order(order(cid="TF8M"))
    assert result.status == "filled"
    posts = kite_server.order_posts()
    assert [p.status for p in posts] == [429, 200]
    assert posts[1].at - posts[0].at >= 0.05
    assert len(kite_server.tagged("TF8M")) == 1


def test_a_429_storm_backs_off_then_gives_up_as_transient(account, kite_server, settings):
    settings.KITE_RATE_RETRIES = 2
    settings.KITE_RATE_BACKOFF = 0.1
    kite_server.throttle_next(50)
    with pytest.raises(BrokerTransient) as excinfo:
        KiteAdapter(account).place_order(order())
    assert excinfo.value.code == "kite_rate_limited" and excinfo.value.retry_after >= 0.4
    times = [p.at for p in kite_server.order_posts()]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.1 and times[2] - times[1] >= 0.2  # exponential backoff
    assert kite_server.orders == []


def test_a_fan_out_never_trips_kites_order_limit(account, kite_server):
    results, errors = [], []
    extra = {"lot_size": 75, "freeze_qty": 1800}

    def worker(n: int) -> None:
        adapter = KiteAdapter(account)  # one client per worker, one limiter for the account
        for i in range(5):
            try:
                results.append(adapter.place_order(order(cid=f"TF{n}{i}M", extra=extra)))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == [] and len(results) == 25 and all(r.status == "filled" for r in results)
    posts = kite_server.order_posts()
    assert [p.status for p in posts].count(429) == 0 and len(posts) == 25
    assert KiteServer.max_in_window([p.at for p in posts], 1.0) <= 10
    assert posts[-1].at - posts[0].at >= 2.0  # 25 orders at ≤ 10/s


# --- freeze split ----------------------------------------------------------------------------------------

def test_above_the_freeze_limit_the_order_goes_in_slices_under_one_tag(account, kite_server, synced):
    kite_server.set_ltp(f"NFO:{DEC30_PE}", "120")
    adapter = KiteAdapter(account)
    result = adapter.place_order(order(cid="TF30M", qty=str(40 * 75)))
    assert [int(p.one("quantity")) for p in kite_server.order_posts()] == [1800, 1200]
    assert {p.one("tag") for p in kite_server.order_posts()} == {"TF30M"}
    assert (result.status, result.filled_qty, result.avg_price) == ("filled", 3000, Decimal("120"))
    status = adapter.order_status(client_order_id="TF30M")
    assert (status.filled_qty, len(status.raw["order_ids"])) == (3000, 2)


def test_more_than_ten_slices_is_refused_before_anything_is_sent(account, kite_server, synced):
    with pytest.raises(BrokerRejected, match="needs 11 orders .* the limit is 10 orders"):
        KiteAdapter(account).place_order(order(qty=str(11 * 1800)))
    assert kite_server.order_posts() == []


@pytest.mark.parametrize("slow_slice", [0, 1])
def test_a_timeout_on_one_slice_is_settled_by_tag_without_a_duplicate(owner, kite_server, slow_slice):
    account = make_account(owner, kite_server, timeout=0.5)
    kite_server.timeout_next_order(seconds=1.5, skip=slow_slice)
    result = KiteAdapter(account).place_order(
        order(cid="TF32M", qty="3600", extra={"lot_size": 75, "freeze_qty": 1800}))
    assert result.status == "filled" and result.filled_qty == 3600
    assert len(kite_server.order_posts()) == 2 and len(kite_server.tagged("TF32M")) == 2


def test_a_slice_kite_will_not_take_leaves_the_placed_ones_reported(account, kite_server):
    kite_server.throttle_next(10, skip=1)  # the second slice meets a 429 storm
    result = KiteAdapter(account).place_order(
        order(cid="TF33M", qty="3600", extra={"lot_size": 75, "freeze_qty": 1800}))
    assert (result.status, result.filled_qty) == ("filled", 1800)
    assert "Slice 2 of 2 (1800) and later not placed: Kite rate limit" in result.reject_reason
    assert result.raw["unplaced_qty"] == 1800


def test_an_unsettled_later_slice_is_ambiguous_and_the_lookup_shows_what_exists(account, kite_server):
    kite_server.fail_next(status=503, skip=1)  # the second slice: 503 before Kite took it
    adapter = KiteAdapter(account)
    with pytest.raises(BrokerAmbiguous):
        adapter.place_order(order(cid="TF34M", qty="3600", extra={"lot_size": 75, "freeze_qty": 1800}))
    found = adapter.order_status(client_order_id="TF34M")
    assert (found.status, found.filled_qty) == ("filled", 1800)


# --- prices, positions, balance, proxy ------------------------------------------------------------------

def test_last_prices_come_from_one_batched_ltp_request(account, kite_server, synced):
    kite_server.set_ltp(f"NFO:{DEC30_PE}", "101.5")
    kite_server.set_ltp(f"NFO:{JAN06_PE}", "140.05")
    kite_server.set_ltp("NSE:RELIANCE", "1532.4")
    symbols = [f"NFO:{DEC30_PE}", JAN06_PE, "NSE:RELIANCE", "NFO:NOSUCHSYMBOL"]

    prices = KiteAdapter(account).last_prices(symbols)

    assert prices == {f"NFO:{DEC30_PE}": Decimal("101.5"), JAN06_PE: Decimal("140.05"),
                      "NSE:RELIANCE": Decimal("1532.4")}
    calls = kite_server.requests_to("/quote/ltp")
    assert len(calls) == 1
    assert calls[0].query["i"] == [f"NFO:{DEC30_PE}", f"NFO:{JAN06_PE}", "NSE:RELIANCE", "NFO:NOSUCHSYMBOL"]


def test_positions_are_signed_and_balance_is_the_equity_margin(account, kite_server):
    adapter = KiteAdapter(account)
    kite_server.set_ltp(f"NFO:{DEC30_PE}", "100")
    adapter.place_order(order(cid="TF40M", qty="150"))
    kite_server.set_ltp("NSE:RELIANCE", "1500")
    adapter.place_order(order(cid="TF41M", symbol="NSE:RELIANCE", side="buy", qty="10"))

    positions = {p.symbol: p for p in adapter.positions()}
    assert (positions[DEC30_PE].qty, positions[DEC30_PE].avg_price) == (-150, 100)
    assert (positions["RELIANCE"].qty, positions["RELIANCE"].avg_price) == (10, 1500)
    assert kite_server.order_posts()[1].one("product") == "CNC"
    balance = adapter.balance()
    assert (balance.currency, balance.cash, balance.equity) == ("INR", Decimal("500000"), Decimal("500000"))


def test_the_accounts_proxy_carries_its_requests(owner, kite_server):
    # The server also answers proxy-form requests, so it can stand in for the customer's static-IP proxy.
    account = make_account(owner, kite_server, proxy=kite_server.url)
    KiteAdapter(account).validate_credentials()
    assert kite_server.requests_to("/user/profile")[0].proxied


def test_the_server_refuses_requests_without_kites_headers(kite_server):
    import requests

    response = requests.get(f"{kite_server.url}/user/profile", timeout=2)
    assert response.status_code == 400 and response.json()["error_type"] == "InputException"
    response = requests.get(f"{kite_server.url}/user/profile", headers={"X-Kite-Version": "3"}, timeout=2)
    assert response.status_code == 403 and response.json()["error_type"] == "TokenException"
