"""Connecting Zerodha and Binance through the pages, with the real SDKs against the local broker servers.

Kite: form → Kite's login page (signed state) → our callback with Kite's request_token → encrypted access token.
Binance: the key is checked with Binance before anything is stored; keys that can withdraw are refused.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.core import signing
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditLog
from brokers.models import AccountApiKey, BrokerAccount
from brokers.services import connect
from tests import factories
from tests.protocol.kite_server import LOGIN_PAGE, KiteServer

pytestmark = pytest.mark.slow
CALLBACK = "/brokers/kite/callback/"




def kite_form(server: KiteServer, **overrides) -> dict:
    return {"label": "Zerodha", "api_key": server.api_key, "api_secret": server.api_secret, "product": "MIS",
            "expiry_rule": "nearest_monthly", "proxy": "", "mode": "paper", **overrides}


def binance_form(key: str, secret: str, **overrides) -> dict:
    return {"label": "Binance", "api_key": key, "api_secret": secret, "market": "futures", "leverage": "",
            "mode": "paper", **overrides}


def login_state(location: str) -> str:
    """The ``state`` we handed Kite, as Kite will hand it back (inside ``redirect_params``)."""
    redirect_params = parse_qs(urlsplit(location).query)["redirect_params"][0]
    return parse_qs(redirect_params)["state"][0]


def raw_columns(pk: int) -> tuple[str, str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key, api_secret, access_token FROM brokers_brokeraccount WHERE id = %s", [pk])
        return cursor.fetchone()


def kite_return(client, state: str, request_token: str, **extra):
    return client.get(CALLBACK, {"action": "login", "type": "login", "status": "success",
                                 "request_token": request_token, "state": state, **extra})


def text(response) -> str:
    return response.content.decode()


def account_pages(client, account: BrokerAccount) -> dict[str, str]:
    urls = [reverse("broker-accounts"), reverse("dashboard"), reverse("broker-account", args=[account.pk]),
            reverse("broker-account-options", args=[account.pk]),
            reverse("broker-account-credentials", args=[account.pk])]
    pages = {}
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        pages[url] = text(response)
    return pages


# --- Zerodha Kite: the connect flow ---------------------------------------------------------------------------

def test_kite_connect_full_flow(owner_client, owner, kite_pointed, live_enabled):
    response = owner_client.post(reverse("broker-connect-kite"), kite_form(kite_pointed, mode="live"))

    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN_PAGE)
    state = login_state(response["Location"])
    account = BrokerAccount.objects.get(owner=owner)
    assert (account.broker, account.mode, account.status, account.currency) == ("kite", "live", "login_needed", "INR")
    assert account.options == {"product": "MIS", "expiry_rule": "nearest_monthly"}
    assert account.api_secret == kite_pointed.api_secret and account.access_token == ""
    assert kite_pointed.api_secret not in raw_columns(account.pk)[1]
    assert kite_pointed.requests == []  # nothing is sent to Kite before the customer logs in there

    response = kite_return(owner_client, state, kite_pointed.issue_request_token())

    assert response.status_code == 302 and response.url == reverse("broker-account", args=[account.pk])
    account.refresh_from_db()
    assert (account.status, account.status_message) == ("active", "")
    token = account.access_token
    assert token and kite_pointed._tokens[token] == kite_pointed.api_key  # the token Kite issued, and it works
    assert token not in raw_columns(account.pk)[2]
    assert account.options["user_id"] == "AB1234" and account.options["logged_in_at"]
    page = text(owner_client.get(response.url))
    assert "Logged in to Kite" in page and "Kite user AB1234" in page
    assert "only time the full key is shown" in page  # the webhook key, once, after the round trip
    assert 'data-testid="kite-login"' not in page
    assert kite_pointed.api_secret not in page and token not in page
    assert AuditLog.objects.filter(user=owner, action="account.kite_login").count() == 1


def test_kite_connect_page_tells_the_redirect_url_to_register(owner_client, kite_pointed, settings):
    page = text(owner_client.get(reverse("broker-connect-kite")))
    assert f'data-testid="kite-redirect-url">{settings.PUBLIC_URL}{CALLBACK}<' in page
    assert "static IP" in page


def test_kite_outbound_proxy_is_used_for_the_session_exchange(owner_client, owner, kite_pointed):
    proxy = kite_pointed.url  # the local server also answers proxy-style absolute requests
    response = owner_client.post(reverse("broker-connect-kite"), kite_form(kite_pointed, proxy=proxy))
    account = BrokerAccount.objects.get(owner=owner)
    assert account.options["proxy"] == proxy and account.status == "active"  # paper mode trades without Kite

    kite_return(owner_client, login_state(response["Location"]), kite_pointed.issue_request_token())

    [exchange] = kite_pointed.requests_to("/session/token", "POST")
    assert exchange.proxied
    account.refresh_from_db()
    assert account.access_token


def test_kite_error_on_a_bad_request_token_is_shown(owner_client, owner, kite_pointed, live_enabled):
    response = owner_client.post(reverse("broker-connect-kite"), kite_form(kite_pointed, mode="live"))
    account = BrokerAccount.objects.get(owner=owner)

    response = kite_return(owner_client, login_state(response["Location"]), "not-a-token")

    assert response.status_code == 302
    page = text(owner_client.get(response.url))
    assert "Kite login failed: Token is invalid or has expired." in page
    assert 'data-testid="kite-login"' in page  # the way to try again
    account.refresh_from_db()
    assert (account.status, account.access_token) == ("login_needed", "")


def test_kite_wrong_api_secret_is_kites_checksum_error(owner_client, owner, kite_pointed):
    response = owner_client.post(reverse("broker-connect-kite"), kite_form(kite_pointed, api_secret="wrongsecret"))
    response = kite_return(owner_client, login_state(response["Location"]), kite_pointed.issue_request_token())
    assert "Invalid checksum" in text(owner_client.get(response.url))
    assert BrokerAccount.objects.get(owner=owner).access_token == ""


def test_kite_cancelled_login_is_explained(owner_client, owner, kite_pointed):
    response = owner_client.post(reverse("broker-connect-kite"), kite_form(kite_pointed))
    response = kite_return(owner_client, login_state(response["Location"]), "", status="cancelled")
    assert "Kite did not complete the login (status: cancelled)" in text(owner_client.get(response.url))
    assert kite_pointed.requests == []


@pytest.fixture
def pending_login(owner_client, owner, kite_pointed, live_enabled):
    """A live Kite account waiting for its login, and the state Kite would hand back."""
    response = owner_client.post(reverse("broker-connect-kite"), kite_form(kite_pointed, mode="live"))
    return BrokerAccount.objects.get(owner=owner), login_state(response["Location"])


def assert_unchanged(account: BrokerAccount, kite_pointed: KiteServer) -> None:
    account.refresh_from_db()
    assert (account.status, account.access_token) == ("login_needed", "")
    assert kite_pointed.requests_to("/session/token", "POST") == []


def test_callback_with_a_tampered_state_is_refused(owner_client, pending_login, kite_pointed):
    account, state = pending_login
    tampered = state[:-1] + ("A" if state[-1] != "A" else "B")
    response = kite_return(owner_client, tampered, kite_pointed.issue_request_token())
    assert response.status_code == 400
    assert "not issued by TradeFlow or was altered" in text(response)
    assert kite_return(owner_client, "", kite_pointed.issue_request_token()).status_code == 400
    assert_unchanged(account, kite_pointed)


def test_callback_with_a_state_signed_for_something_else_is_refused(owner_client, owner, pending_login, kite_pointed):
    account, _ = pending_login
    other_salt = signing.dumps({"account": account.pk, "user": owner.pk}, salt="another-purpose")
    assert kite_return(owner_client, other_salt, kite_pointed.issue_request_token()).status_code == 400
    assert_unchanged(account, kite_pointed)


def test_callback_with_an_expired_state_is_refused(owner_client, pending_login, kite_pointed):
    account, state = pending_login
    with time_machine.travel(timezone.now() + timedelta(seconds=connect.KITE_STATE_MAX_AGE + 60)):
        response = kite_return(owner_client, state, kite_pointed.issue_request_token())
    assert response.status_code == 400 and "has expired" in text(response)
    assert_unchanged(account, kite_pointed)


def test_callback_for_another_customers_account_is_404(client, other, pending_login, kite_pointed):
    account, state = pending_login
    client.force_login(other)
    assert kite_return(client, state, kite_pointed.issue_request_token()).status_code == 404
    assert_unchanged(account, kite_pointed)


def test_callback_state_naming_a_non_kite_account_is_404(owner_client, owner, paper, kite_pointed):
    account, _ = paper
    state = signing.dumps({"account": account.pk, "user": owner.pk}, salt=connect.KITE_STATE_SALT)
    assert kite_return(owner_client, state, kite_pointed.issue_request_token()).status_code == 404
    assert kite_pointed.requests == []


def test_callback_needs_login(client, pending_login, kite_pointed):
    _, state = pending_login
    client.logout()
    response = kite_return(client, state, "tok")
    assert response.status_code == 302 and response.url.startswith(reverse("account_login"))


# --- Zerodha Kite: the daily re-login -------------------------------------------------------------------------

def test_login_needed_account_shows_the_relogin_button(owner_client, owner, kite_pointed):
    account = factories.kite_account(owner=owner, access_token=kite_pointed.grant_access_token(),
                                     status="login_needed", status_message="Broker login needed: token expired")
    page = text(owner_client.get(reverse("broker-account", args=[account.pk])))
    assert 'data-testid="kite-login"' in page and reverse("broker-kite-login", args=[account.pk]) in page
    assert "Broker login needed: token expired" in page and "Kite no longer accepts the session" in page

    response = owner_client.get(reverse("broker-kite-login", args=[account.pk]))
    assert response.status_code == 302 and response["Location"].startswith(LOGIN_PAGE)
    kite_return(owner_client, login_state(response["Location"]), kite_pointed.issue_request_token())
    account.refresh_from_db()
    assert account.status == "active"
    assert 'data-testid="kite-login"' not in text(owner_client.get(reverse("broker-account", args=[account.pk])))


def test_a_session_from_yesterday_shows_the_relogin_button(owner_client, owner, kite_pointed):
    yesterday = (timezone.localdate(timezone=connect.IST) - timedelta(days=1)).isoformat()
    account = factories.kite_account(owner=owner, access_token="tok", options={"session_date": yesterday})
    page = text(owner_client.get(reverse("broker-account", args=[account.pk])))
    assert 'data-testid="kite-login"' in page and f"The Kite session is from {yesterday}" in page


def test_a_kite_account_never_logged_in_shows_the_login_button(owner_client, owner):
    account = factories.kite_account(owner=owner, mode="paper")
    page = text(owner_client.get(reverse("broker-account", args=[account.pk])))
    assert 'data-testid="kite-login"' in page and "Not logged in to Kite yet" in page


def test_kite_login_is_only_for_kite_accounts(owner_client, paper):
    account, _ = paper
    assert owner_client.get(reverse("broker-kite-login", args=[account.pk])).status_code == 404
    assert 'data-testid="kite-login"' not in text(owner_client.get(reverse("broker-account", args=[account.pk])))


# --- modes ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["broker-connect-kite", "broker-connect-binance"])
def test_live_is_offered_only_when_the_server_allows_it(owner_client, owner, settings, name):
    settings.LIVE_TRADING_ENABLED = False
    page = text(owner_client.get(reverse(name)))
    assert 'value="live"' not in page and "Live trading is switched off on this TradeFlow server" in page
    response = owner_client.post(reverse(name), {"label": "X", "api_key": "k" * 64, "api_secret": "s" * 64,
                                                 "mode": "live", "product": "NRML", "expiry_rule": "nearest_weekly",
                                                 "market": "spot"})
    assert response.status_code == 200 and "mode" in response.context["form"].errors
    assert not BrokerAccount.objects.filter(owner=owner).exists()

    settings.LIVE_TRADING_ENABLED = True
    assert 'value="live"' in text(owner_client.get(reverse(name)))


# --- Binance --------------------------------------------------------------------------------------------------

def test_binance_connect_futures_on_testnet(owner_client, owner, binance, live_enabled):
    response = owner_client.post(reverse("broker-connect-binance"), binance_form(
        binance.api_key, binance.api_secret, testnet="on", leverage="10", mode="live"))

    account = BrokerAccount.objects.get(owner=owner)
    assert response.status_code == 302 and response.url == reverse("broker-account", args=[account.pk])
    assert account.options == {"market": "futures", "testnet": True, "leverage": 10}
    assert (account.broker, account.mode, account.status, account.currency) == ("binance", "live", "active", "USDT")
    assert [r.path for r in binance.log] == ["/fapi/v2/account",  # checked on the testnet endpoint, signed
                                            "/fapi/v1/positionSide/dual"]  # and in One-way Mode
    assert binance.api_secret not in raw_columns(account.pk)[1]
    page = text(owner_client.get(response.url))
    assert "Binance accepted the key" in page and "<strong>testnet</strong>" in page and "10×" in page
    assert "only time the full key is shown" in page
    assert binance.api_secret not in page and binance.api_key not in page
    assert f"••••{binance.api_key[-4:]}" in page


def test_binance_key_that_can_withdraw_is_refused_and_not_saved(owner_client, owner, binance):
    key, secret = binance.add_account(can_withdraw=True)
    response = owner_client.post(reverse("broker-connect-binance"), binance_form(key, secret, market="spot"))

    assert response.status_code == 200
    page = text(response)
    assert "can withdraw funds, so TradeFlow will not store it" in page
    assert "Enable Withdrawals" in page and "trade-only key" in page and "server IP" in page
    assert secret not in page
    assert not BrokerAccount.objects.exists() and not AccountApiKey.objects.exists()
    assert not AuditLog.objects.filter(action="account.created").exists()


def test_binance_wrong_secret_is_a_form_error_in_plain_words(owner_client, owner, binance):
    response = owner_client.post(reverse("broker-connect-binance"), binance_form(binance.api_key, "f" * 64))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "The API secret does not belong to this API key" in errors["api_secret"][0]
    assert "f" * 64 not in text(response)
    assert not BrokerAccount.objects.exists()


def test_binance_unknown_key_is_a_form_error(owner_client, binance):
    response = owner_client.post(reverse("broker-connect-binance"), binance_form("a" * 64, "b" * 64, testnet="on"))
    assert "Binance testnet does not accept this API key" in response.context["form"].errors["api_key"][0]
    response = owner_client.post(reverse("broker-connect-binance"), binance_form("short", "b" * 64))
    assert "keys are 64 letters and digits" in response.context["form"].errors["api_key"][0]
    assert not BrokerAccount.objects.exists()


def test_binance_unreachable_says_nothing_was_saved(owner_client, binance, settings):
    settings.BINANCE_FUTURES_URL = "http://127.0.0.1:9/fapi"
    response = owner_client.post(reverse("broker-connect-binance"), binance_form(binance.api_key, binance.api_secret))
    assert "Nothing was saved; try again in a minute" in text(response)
    assert not BrokerAccount.objects.exists()


def test_binance_key_without_ip_whitelist_connects_with_a_warning(owner_client, owner, binance):
    key, secret = binance.add_account(ip_restrict=False)
    response = owner_client.post(reverse("broker-connect-binance"), binance_form(key, secret, market="spot",
                                                                                 leverage="5"))
    account = BrokerAccount.objects.get(owner=owner)
    assert account.options == {"market": "spot", "testnet": False}  # no leverage on spot
    page = text(owner_client.get(response.url))
    assert 'class="flash flash-warning">This API key has no IP whitelist' in page and "30 days" in page


# --- options and credentials after connecting -----------------------------------------------------------------

def test_kite_options_edit_keeps_the_proxy_password_out_of_pages(owner_client, owner):
    account = factories.kite_account(owner=owner)
    url = reverse("broker-account-options", args=[account.pk])
    proxy = "http://trader:pr0xyPass@203.0.113.7:3128"
    response = owner_client.post(url, {"product": "MIS", "expiry_rule": "nearest_monthly", "proxy": proxy})
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.options == {"product": "MIS", "expiry_rule": "nearest_monthly", "proxy": proxy}
    detail = text(owner_client.get(reverse("broker-account", args=[account.pk])))
    assert "http://trader:••••@203.0.113.7:3128" in detail and "pr0xyPass" not in detail
    form_page = text(owner_client.get(url))
    assert "pr0xyPass" not in form_page and '<option value="MIS" selected>' in form_page

    owner_client.post(url, {"product": "NRML", "expiry_rule": "nearest_weekly", "proxy": ""})  # blank keeps it
    account.refresh_from_db()
    assert account.options["proxy"] == proxy and account.options["product"] == "NRML"
    owner_client.post(url, {"product": "NRML", "expiry_rule": "nearest_weekly", "clear_proxy": "on"})
    account.refresh_from_db()
    assert "proxy" not in account.options


def test_options_refuse_a_bad_proxy_url(owner_client, owner):
    account = factories.kite_account(owner=owner)
    response = owner_client.post(reverse("broker-account-options", args=[account.pk]),
                                 {"product": "NRML", "expiry_rule": "nearest_weekly", "proxy": "ftp://x.example"})
    assert response.status_code == 200 and "proxy" in response.context["form"].errors


def test_binance_switch_from_testnet_to_live_rechecks_the_key(owner_client, owner, binance):
    key, secret = binance.add_account(can_withdraw=True)  # the testnets have no withdrawals to check
    account = factories.binance_account(owner=owner, api_key=key, api_secret=secret, testnet=True, leverage=5)
    url = reverse("broker-account-options", args=[account.pk])

    response = owner_client.post(url, {"leverage": "20"})  # testnet unticked
    assert response.status_code == 200 and "can withdraw funds" in text(response)
    account.refresh_from_db()
    assert account.options == {"market": "futures", "testnet": True, "leverage": 5}

    assert owner_client.post(url, {"testnet": "on", "leverage": "20"}).status_code == 302
    account.refresh_from_db()
    assert account.options == {"market": "futures", "testnet": True, "leverage": 20}


def test_kite_replace_credentials_ends_the_session_and_sends_to_kite(owner_client, owner, kite_pointed):
    account = factories.kite_account(owner=owner, api_key="oldkey1234", api_secret="oldsecret",
                                     access_token=kite_pointed.grant_access_token())
    url = reverse("broker-account-credentials", args=[account.pk])
    assert "oldsecret" not in text(owner_client.get(url)) and "oldkey1234" not in text(owner_client.get(url))

    response = owner_client.post(url, {"api_key": kite_pointed.api_key, "api_secret": kite_pointed.api_secret})

    assert response.status_code == 302 and response["Location"].startswith(LOGIN_PAGE)
    account.refresh_from_db()
    assert (account.api_key, account.api_secret, account.access_token, account.status) == (
        kite_pointed.api_key, kite_pointed.api_secret, "", "login_needed")
    kite_return(owner_client, login_state(response["Location"]), kite_pointed.issue_request_token())
    account.refresh_from_db()
    assert account.status == "active" and account.access_token


def test_binance_replace_credentials_is_checked_first(owner_client, owner, binance):
    account = factories.binance_account(owner=owner, api_key=binance.api_key, api_secret=binance.api_secret)
    url = reverse("broker-account-credentials", args=[account.pk])
    bad_key, bad_secret = binance.add_account(can_withdraw=True)
    response = owner_client.post(url, {"api_key": bad_key, "api_secret": bad_secret})
    assert response.status_code == 200 and "can withdraw funds" in text(response)
    account.refresh_from_db()
    assert account.api_key == binance.api_key

    good_key, good_secret = binance.add_account()
    assert owner_client.post(url, {"api_key": good_key, "api_secret": good_secret}).status_code == 302
    account.refresh_from_db()
    assert (account.api_key, account.api_secret, account.status) == (good_key, good_secret, "active")


def test_paper_accounts_have_no_connection_pages(owner_client, paper):
    account, _ = paper
    for name in ("broker-account-options", "broker-account-credentials"):
        assert owner_client.get(reverse(name, args=[account.pk])).status_code == 404


# --- ownership, login, secrecy --------------------------------------------------------------------------------

def test_other_customer_gets_404_on_every_connection_url(client, owner, other):
    account = factories.kite_account(owner=owner, access_token="tok")
    before = (account.options, account.api_key, account.api_secret)
    client.force_login(other)
    for name in ("broker-kite-login", "broker-account-options", "broker-account-credentials"):
        url = reverse(name, args=[account.pk])
        assert client.get(url).status_code == 404, name
        assert client.post(url, {"api_key": "x", "api_secret": "y", "product": "MIS",
                                 "expiry_rule": "nearest_weekly"}).status_code == 404, name
    account.refresh_from_db()
    assert (account.options, account.api_key, account.api_secret, account.access_token) == (*before, "tok")


@pytest.mark.parametrize("name", ["broker-connect-kite", "broker-connect-binance"])
def test_anonymous_is_sent_to_login_from_connect_pages(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and response.url.startswith(reverse("account_login"))


def test_account_list_links_to_every_way_of_adding_an_account(owner_client):
    page = text(owner_client.get(reverse("broker-accounts")))
    for name, label in (("broker-connect-kite", "Connect Zerodha"), ("broker-connect-binance", "Connect Binance"),
                        ("broker-account-new", "New paper account")):
        assert f'href="{reverse(name)}">{label}</a>' in page


def test_credentials_never_appear_in_any_page(owner_client, owner, binance):
    kite = factories.kite_account(owner=owner, api_key="kiteKEY9876abcd", api_secret="kiteSECRETzzz",
                                  access_token="kiteACCESStoken", status="active",
                                  options={"proxy": "socks5://u:SOCKSpw@198.51.100.2:1080"})
    crypto = factories.binance_account(owner=owner, api_key=binance.api_key, api_secret=binance.api_secret)
    secrets_ = ["kiteKEY9876abcd", "kiteSECRETzzz", "kiteACCESStoken", "SOCKSpw", binance.api_key,
                binance.api_secret]
    for account in (kite, crypto):
        for url, page in account_pages(owner_client, account).items():
            for secret in secrets_:
                assert secret not in page, (url, secret)
    detail = text(owner_client.get(reverse("broker-account", args=[kite.pk])))
    assert "••••abcd" in detail and "saved (encrypted, never shown)" in detail
    for secret in ("kiteSECRETzzz", "kiteACCESStoken"):
        assert all(secret not in column for column in raw_columns(kite.pk))
