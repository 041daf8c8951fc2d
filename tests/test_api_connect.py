"""Connecting Binance and Kite accounts through the API (``POST /api/v1/accounts/`` with ``broker``), with the real
SDKs against the local broker servers: the same services, checks, messages and plan limits as the connect pages.
"""

from __future__ import annotations

import json
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse

from accounts.models import AuditLog
from accounts.tokens import api_token_create
from billing.models import BillingAccount, Plan
from billing.services import billing_account_get
from brokers.adapters.binance import HEDGE_MODE_REFUSAL
from brokers.models import AccountApiKey, BrokerAccount, Execution, Order
from brokers.services import api_key_authenticate
from tests import factories
from tests.protocol.kite_server import LOGIN_PAGE, KiteServer

pytestmark = [pytest.mark.django_db, pytest.mark.slow]
URL = "/api/v1/accounts/"




@pytest.fixture
def api(client, owner):
    token = api_token_create(owner=owner, name="connect").raw

    def call(method: str, url: str, body=None, token_=None):
        headers = {"HTTP_AUTHORIZATION": f"Token {token_ or token}"}
        if method == "get":
            return client.get(url, **headers)
        return getattr(client, method)(url, json.dumps(body or {}), content_type="application/json", **headers)

    return call


def binance_body(key: str, secret: str, **overrides) -> dict:
    return {"broker": "binance", "label": "Binance bot", "api_key": key, "api_secret": secret, "market": "futures",
            "testnet": False, **overrides}


def kite_body(server: KiteServer, **overrides) -> dict:
    return {"broker": "kite", "label": "Zerodha", "api_key": server.api_key, "api_secret": server.api_secret,
            "product": "MIS", "expiry_rule": "nearest_monthly", **overrides}


def assert_refused(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:400]
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"} and error["code"] == code
    return error


# --- Binance -------------------------------------------------------------------------------------------------

def test_binance_connect_then_an_alert_trades_on_binance(api, client, owner, binance, live_enabled,
                                                         django_capture_on_commit_callbacks):
    response = api("post", URL, binance_body(binance.api_key, binance.api_secret, mode="live", leverage=5))

    assert response.status_code == 201, response.content
    body = response.json()
    account = BrokerAccount.objects.get(owner=owner, pk=body["account"]["id"])
    assert (account.broker, account.mode, account.status, account.currency) == ("binance", "live", "active", "USDT")
    assert account.options == {"market": "futures", "testnet": False, "leverage": 5}
    assert body["account"]["status"] == "active" and body["account"]["has_credentials"] is True
    assert body["account"]["options"] == {"market": "futures", "testnet": False, "leverage": 5}
    assert body["kite_login_url"] is None and body["warnings"] == []
    assert [r.path for r in binance.log][:2] == ["/fapi/v2/account", "/fapi/v1/positionSide/dual"]
    raw = body["webhook_key"]
    assert body["webhook_url"].endswith(f"/api/v1/webhooks/{raw}") and api_key_authenticate(raw).pk == account.pk
    assert raw not in api("get", f"{URL}{account.pk}/").content.decode()  # the key is shown once

    binance.log.clear()
    alert = {"version": "unify.v1", "intent": {"side": "buy", "symbol": "BTCUSDT", "qty": "0.002"}}
    with django_capture_on_commit_callbacks(execute=True):
        sent = client.post(f"/api/v1/webhooks/{raw}", json.dumps(alert), content_type="text/plain")
    assert sent.status_code == 202, sent.content
    execution = Execution.objects.get(signal_id=sent.json()["signal_id"])
    assert execution.status == Execution.Status.FILLED, execution.reason
    order = Order.objects.get(execution=execution, leg="main")
    assert order.broker_order_id and order.qty == Decimal("0.002")
    assert ("POST", "/fapi/v1/order") in [(r.method, r.path) for r in binance.log]


def test_binance_wrong_secret_is_422_naming_the_secret_and_saves_nothing(api, owner, binance):
    response = api("post", URL, binance_body(binance.api_key, "f" * 64))

    error = assert_refused(response, 422, "broker_refused")
    assert "The API secret does not belong to this API key" in error["message"]
    assert "api_secret" in error["fields"] and "The API secret does not belong" in error["fields"]["api_secret"]
    assert "f" * 64 not in response.content.decode() and binance.api_key not in response.content.decode()
    assert not BrokerAccount.objects.filter(owner=owner).exists() and not AccountApiKey.objects.exists()
    assert not AuditLog.objects.filter(action="account.created").exists()


def test_binance_unknown_key_and_withdrawal_key_say_what_to_do(api, owner, binance):
    error = assert_refused(api("post", URL, binance_body("a" * 64, "b" * 64, testnet=True)), 422, "broker_refused")
    assert "Binance testnet does not accept this API key" in error["fields"]["api_key"]
    key, secret = binance.add_account(can_withdraw=True)
    error = assert_refused(api("post", URL, binance_body(key, secret, market="spot")), 422, "broker_refused")
    assert "can withdraw funds, so TradeFlow will not store it" in error["message"] and "trade-only key" in \
        error["message"]
    assert not BrokerAccount.objects.filter(owner=owner).exists()


def test_binance_hedge_mode_is_refused_with_the_pages_message(api, owner_client, owner, binance):
    binance.account().dual_side = True
    error = assert_refused(api("post", URL, binance_body(binance.api_key, binance.api_secret)), 422, "broker_refused")

    assert error["message"] == f"Binance refused the key: {HEDGE_MODE_REFUSAL}"
    page = owner_client.post(reverse("broker-connect-binance"), {
        "label": "Binance", "api_key": binance.api_key, "api_secret": binance.api_secret, "market": "futures",
        "leverage": "", "mode": "paper"})
    assert [e.message for e in page.context["form"].non_field_errors().as_data()] == [error["message"]]  # the page's
    assert not BrokerAccount.objects.filter(owner=owner).exists()


def test_binance_unreachable_is_503_and_saves_nothing(api, owner, binance, settings):
    settings.BINANCE_FUTURES_URL = "http://127.0.0.1:9/fapi"
    error = assert_refused(api("post", URL, binance_body(binance.api_key, binance.api_secret)), 503,
                           "broker_unavailable")
    assert "Nothing was saved; try again in a minute" in error["message"]
    assert not BrokerAccount.objects.filter(owner=owner).exists()


def test_replacing_a_binance_key_answers_as_connecting_does_and_a_refused_one_changes_nothing(
        api, owner, binance, settings):
    created = api("post", URL, binance_body(binance.api_key, binance.api_secret))
    assert created.status_code == 201, created.content
    account = BrokerAccount.objects.get(pk=created.json()["account"]["id"])
    url = f"/api/v1/accounts/{account.pk}/credentials/"

    error = assert_refused(api("put", url, {"api_key": binance.api_key, "api_secret": "f" * 64}), 422,
                           "broker_refused")
    assert "The API secret does not belong to this API key" in error["fields"]["api_secret"]
    settings.BINANCE_FUTURES_URL = "http://127.0.0.1:9/fapi"
    error = assert_refused(api("put", url, {"api_key": "c" * 64, "api_secret": "d" * 64}), 503, "broker_unavailable")
    assert "try again in a minute" in error["message"]
    account.refresh_from_db()
    assert (account.api_key, account.api_secret) == (binance.api_key, binance.api_secret)  # unchanged


def test_binance_key_without_ip_whitelist_connects_with_the_warning(api, owner, binance):
    key, secret = binance.add_account(ip_restrict=False)
    response = api("post", URL, binance_body(key, secret, market="spot", leverage=5))
    assert response.status_code == 201, response.content
    assert any("no IP whitelist" in w for w in response.json()["warnings"])
    assert BrokerAccount.objects.get(owner=owner).options == {"market": "spot", "testnet": False}  # no spot leverage


def test_plan_limit_is_the_plans_message_before_asking_the_broker(api, owner, binance, kite_pointed):
    factories.kite_account(owner=owner)
    error = assert_refused(api("post", URL, binance_body(binance.api_key, binance.api_secret)), 422, "plan_limit")
    assert error["message"] == "Your Trial plan allows 1 broker; Pro allows 2. Upgrade to add more."
    assert binance.log == []  # refused before the key went anywhere
    error = assert_refused(api("post", URL, kite_body(kite_pointed, label="Second")), 422, "plan_limit")
    assert error["message"] == "Your Trial plan allows 1 account per broker; Pro allows 2. Upgrade to add more."
    assert BrokerAccount.objects.filter(owner=owner).count() == 1
    assert api("post", URL, {"label": "Paper is free"}).status_code == 201  # paper accounts are never limited


def test_live_mode_is_refused_when_the_server_does_not_allow_it(api, owner, binance, settings):
    settings.LIVE_TRADING_ENABLED = False
    response = api("post", URL, binance_body(binance.api_key, binance.api_secret, mode="live"))
    error = assert_refused(response, 400, "invalid_fields")
    assert "Live trading is switched off on this TradeFlow server" in error["fields"]["mode"]
    assert binance.log == [] and not BrokerAccount.objects.filter(owner=owner).exists()


# --- Kite ----------------------------------------------------------------------------------------------------

def test_kite_connect_answers_the_login_url_and_the_web_callback_finishes_it(api, client, owner, kite_pointed,
                                                                          live_enabled, settings):
    response = api("post", URL, kite_body(kite_pointed, mode="live"))

    assert response.status_code == 201, response.content
    body = response.json()
    account = BrokerAccount.objects.get(owner=owner, pk=body["account"]["id"])
    assert (account.broker, account.mode, account.status) == ("kite", "live", "login_needed")
    assert body["account"]["status"] == "login_needed" and "Log in to Kite" in body["account"]["status_message"]
    assert body["kite_redirect_url"] == settings.PUBLIC_URL + "/brokers/kite/callback/"
    assert body["kite_login_url"].startswith(LOGIN_PAGE) and kite_pointed.requests == []
    assert api("get", f"{URL}{account.pk}/").json()["status"] == "login_needed"

    # The customer's program opens the URL; Kite sends the browser back to the web callback with the state.
    redirect_params = parse_qs(urlsplit(body["kite_login_url"]).query)["redirect_params"][0]
    state = parse_qs(redirect_params)["state"][0]
    client.force_login(owner)
    done = client.get("/brokers/kite/callback/", {"status": "success", "state": state,
                                                  "request_token": kite_pointed.issue_request_token()})
    assert done.status_code == 302
    assert api("get", f"{URL}{account.pk}/").json()["status"] == "active"


def test_kite_fresh_login_url_for_the_daily_login(api, owner, kite_pointed, paper):
    account = factories.kite_account(owner=owner, status="login_needed")
    response = api("post", f"{URL}{account.pk}/kite-login/")
    assert response.status_code == 200
    assert response.json()["kite_login_url"].startswith(LOGIN_PAGE) and "redirect_params=" in response.text
    paper_account, _ = paper
    assert_refused(api("post", f"{URL}{paper_account.pk}/kite-login/"), 409, "not_kite")


def test_another_customers_kite_login_state_is_useless_to_them(api, client, owner, other, kite_pointed):
    body = api("post", URL, kite_body(kite_pointed)).json()
    state = parse_qs(parse_qs(urlsplit(body["kite_login_url"]).query)["redirect_params"][0])["state"][0]
    other_token = api_token_create(owner=other, name="theirs").raw
    assert api("get", f"{URL}{body['account']['id']}/", token_=other_token).status_code == 404
    assert api("post", f"{URL}{body['account']['id']}/kite-login/", token_=other_token).status_code == 404
    client.force_login(other)
    returned = client.get("/brokers/kite/callback/", {"status": "success", "state": state,
                                                      "request_token": kite_pointed.issue_request_token()})
    assert returned.status_code == 404
    assert kite_pointed.requests_to("/session/token", "POST") == []


# --- scope, validation, secrecy ------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [{"broker": "kite", "label": "K", "api_key": "k1", "api_secret": "s1"},
                                  {"broker": "binance", "label": "B", "api_key": "k" * 64, "api_secret": "s" * 64},
                                  {"label": "Paper"}])
def test_a_read_only_token_cannot_connect(api, owner, binance, body):
    read_only = api_token_create(owner=owner, name="ro", read_only=True).raw
    error = assert_refused(api("post", URL, body, token_=read_only), 403, "read_only_token")
    assert "read-only" in error["message"]
    assert binance.log == [] and not BrokerAccount.objects.filter(owner=owner).exists()


def test_invalid_input_names_the_fields(api, owner):
    error = assert_refused(api("post", URL, {"broker": "ibkr", "label": "x"}), 400, "invalid_fields")
    assert "broker" in error["fields"]
    error = assert_refused(api("post", URL, {"broker": "binance", "label": "B", "api_key": "a b", "market": "margin",
                                             "leverage": 500}), 400, "invalid_fields")
    assert set(error["fields"]) == {"api_key", "api_secret", "market", "leverage"}
    assert error["fields"]["api_key"] == "Paste the value without spaces."
    error = assert_refused(api("post", URL, {"broker": "kite", "label": "K", "api_key": "k", "api_secret": "s",
                                             "proxy": "ftp://x.example"}), 400, "invalid_fields")
    assert "proxy" in error["fields"]
    assert not BrokerAccount.objects.filter(owner=owner).exists()


def test_credentials_are_never_in_any_answer(api, owner, binance, kite_pointed):
    billing = billing_account_get(user=owner)  # on Pro: two brokers
    billing.plan, billing.status = Plan.objects.get(slug="pro"), BillingAccount.Status.ACTIVE
    billing.save()
    key, secret = binance.add_account()
    refused = api("post", URL, binance_body(key, "0" * 64, testnet=True))
    connected = api("post", URL, binance_body(key, secret, testnet=True))
    assert (refused.status_code, connected.status_code) == (422, 201)
    kite = api("post", URL, kite_body(kite_pointed, api_key="kiteKEY9876abcd", api_secret="kiteSECRETzz9",
                                      proxy="socks5://u:SOCKSpw@198.51.100.2:1080"))
    assert kite.status_code == 201, kite.content  # paper mode: no login needed to trade, the URL is offered anyway
    ids = [connected.json()["account"]["id"], kite.json()["account"]["id"]]
    login = api("post", f"{URL}{ids[1]}/kite-login/")
    answers = [refused, connected, kite, login, api("get", URL)] + [api("get", f"{URL}{pk}/") for pk in ids]
    for response in answers:
        text = response.content.decode()
        for value in (secret, "0" * 64, "kiteSECRETzz9", "SOCKSpw", key):
            assert value not in text, (response.status_code, value)
    # Kite's app key is public by Kite's design (it is in its login page's address): there only, nowhere else.
    for response in answers:
        data = response.json()
        if isinstance(data, dict):
            data.pop("kite_login_url", None)
        assert "kiteKEY9876abcd" not in json.dumps(data)
    for pk in ids:
        detail = api("get", f"{URL}{pk}/").json()
        assert "api_key" not in detail and "api_secret" not in detail and detail["has_credentials"] is True
        assert "proxy" not in detail["options"]
