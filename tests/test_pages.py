"""Customer pages and the admin: rendering, login, ownership, the once-shown key, closing a position."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from django.contrib import admin
from django.urls import reverse

from accounts.models import AuditLog, TradingSettings
from brokers.adapters.paper import quote_set
from brokers.models import AccountApiKey, Broker, BrokerAccount, Execution, Instrument, Order, Position
from brokers.services import position_apply_fill
from tests.factories import paper_account
from webhooks.models import WebhookLog

D = Decimal
LIST_PAGES = ["dashboard", "broker-accounts", "broker-account-new", "positions", "orders", "executions",
              "webhook-log", "trading-settings"]


def alert(client, key: str, symbol: str = "BTCUSDT", side: str = "buy", qty: str = "0.5", price: str = "50000",
          **extra):
    body = {"version": "unify.v1", "intent": {"side": side, "symbol": symbol, "qty": qty, "price": price}, **extra}
    response = client.post(f"/api/v1/webhooks/{key}", data=json.dumps(body), content_type="text/plain")
    assert response.status_code == 202, response.content
    return response


@pytest.fixture
def traded(paper, client, django_capture_on_commit_callbacks):
    """The owner's paper account after one filled alert: an open long 0.5 BTCUSDT at 50000."""
    account, key = paper
    with django_capture_on_commit_callbacks(execute=True):
        alert(client, key)
    assert Execution.objects.get().status == Execution.Status.FILLED
    return account, key, Position.objects.get(account=account, status=Position.Status.OPEN)


# --- rendering -------------------------------------------------------------------------------------


def test_dashboard_shows_positions_and_recent_signals(owner_client, traded):
    account, _, position = traded
    quote_set(broker=Broker.PAPER, symbol="BTCUSDT", price=D("50100"))
    Position.objects.filter(pk=position.pk).update(last_price=D("50100"))
    page = owner_client.get(reverse("dashboard")).content.decode()
    assert "BTCUSDT" in page
    assert re.search(r'data-testid="unrealized"[^>]*>50.00 INR<', page)  # 0.5 × (50100 − 50000), with its currency
    assert "1 open position" in page
    assert "Filled" in page


def test_dashboard_for_a_new_customer_points_to_creating_an_account(owner_client):
    page = owner_client.get(reverse("dashboard")).content.decode()
    assert "No broker account yet" in page and reverse("broker-account-new") in page


def test_every_list_page_renders_with_data(owner_client, traded):
    account, _, _ = traded
    for name in LIST_PAGES:
        response = owner_client.get(reverse(name))
        assert response.status_code == 200, name
    assert "BTCUSDT" in owner_client.get(reverse("orders")).content.decode()
    assert "BTCUSDT" in owner_client.get(reverse("executions")).content.decode()
    log_page = owner_client.get(reverse("webhook-log")).content.decode()
    assert "202" in log_page and account.label in log_page


def test_account_list_shows_only_the_masked_key(owner_client, paper):
    account, key = paper
    page = owner_client.get(reverse("broker-accounts")).content.decode()
    assert account.label in page
    assert account.webhook_key.masked in page
    assert key not in page and key[9:] not in page


def test_account_detail_renders_copy_ready_alerts(owner_client, paper):
    account, _ = paper
    response = owner_client.get(reverse("broker-account", args=[account.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "unify.v1" in page and "&quot;strike&quot;" in page
    assert "http://127.0.0.1:8000/api/v1/webhooks/&lt;your-webhook-key&gt;" in page
    assert "<code>{{close}}</code>" in page  # the TradingView placeholder, shown literally
    assert account.webhook_key.masked in page


def test_positions_orders_and_log_show_only_my_data(client, traded, other):
    client.force_login(other)
    for name in ("dashboard", "positions", "orders", "executions", "webhook-log"):
        page = client.get(reverse(name)).content.decode()
        assert "BTCUSDT" not in page, name
        assert "Paper" not in page.split("<main", 1)[1], name


def test_trading_settings_save(owner_client, owner):
    url = reverse("trading-settings")
    response = owner_client.post(url, {"default_lots": "4", "auto_trade": "", "hedge_pct": "25",
                                       "hedge_strike_offset": "300", "timezone": "Europe/London"})
    assert response.status_code == 302 and response.url == url
    saved = TradingSettings.objects.get(user=owner)
    assert (saved.default_lots, saved.auto_trade, saved.hedge_pct, saved.hedge_strike_offset, saved.timezone) == (
        4, False, D("25"), 300, "Europe/London")
    assert "Trading settings saved." in owner_client.get(url).content.decode()
    # Who changed what, from what, is on record; saving the same values again records nothing.
    audit = AuditLog.objects.get(user=owner, action="trading_settings.updated")
    assert audit.details == {"default_lots": {"from": "1", "to": "4"}, "auto_trade": {"from": "True", "to": "False"},
                             "hedge_pct": {"from": "30.00", "to": "25"},
                             "hedge_strike_offset": {"from": "200", "to": "300"},
                             "timezone": {"from": "Asia/Kolkata", "to": "Europe/London"}}
    assert audit.actor == owner and audit.ip == "127.0.0.1"
    owner_client.post(url, {"default_lots": "4", "auto_trade": "", "hedge_pct": "25", "hedge_strike_offset": "300",
                            "timezone": "Europe/London"})
    assert AuditLog.objects.filter(action="trading_settings.updated").count() == 1


def test_trading_settings_refuse_bad_values(owner_client, owner):
    response = owner_client.post(reverse("trading-settings"), {
        "default_lots": "0", "auto_trade": "on", "hedge_pct": "150", "hedge_strike_offset": "200",
        "timezone": "Mars/Olympus"})
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"default_lots", "hedge_pct", "timezone"}
    saved = TradingSettings.objects.get(user=owner)
    assert (saved.default_lots, saved.hedge_pct) == (1, D("30"))


# --- login required --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LIST_PAGES)
def test_anonymous_is_sent_to_login(client, name):
    url = reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response.url == f"{reverse('account_login')}?next={url}"


@pytest.mark.parametrize("name", ["broker-account", "broker-account-regenerate", "broker-account-toggle",
                                  "position-close"])
def test_anonymous_cannot_act_on_objects(client, traded, name):
    account, _, position = traded
    pk = position.pk if name == "position-close" else account.pk
    response = client.post(reverse(name, args=[pk]))
    assert response.status_code == 302 and response.url.startswith(reverse("account_login"))


# --- ownership -------------------------------------------------------------------------------------


def test_other_customer_gets_404_on_my_account(client, paper, other):
    account, key = paper
    client.force_login(other)
    assert client.get(reverse("broker-account", args=[account.pk])).status_code == 404
    assert client.post(reverse("broker-account-regenerate", args=[account.pk])).status_code == 404
    assert client.post(reverse("broker-account-toggle", args=[account.pk])).status_code == 404
    account.refresh_from_db()
    assert account.enabled
    assert AccountApiKey.objects.get(account=account).key_hash == account.webhook_key.key_hash
    assert client.post(f"/api/v1/webhooks/{key}", data="{}", content_type="text/plain").status_code == 422  # key works


def test_other_customer_cannot_close_my_position(client, traded, other, django_capture_on_commit_callbacks):
    _, _, position = traded
    client.force_login(other)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(reverse("position-close", args=[position.pk])).status_code == 404
    position.refresh_from_db()
    assert position.status == Position.Status.OPEN
    assert Execution.objects.count() == 1


def test_unknown_ids_are_404(owner_client):
    assert owner_client.get(reverse("broker-account", args=[999999])).status_code == 404
    assert owner_client.post(reverse("position-close", args=[999999])).status_code == 404


def test_actions_need_post(owner_client, traded):
    account, _, position = traded
    assert owner_client.get(reverse("broker-account-regenerate", args=[account.pk])).status_code == 405
    assert owner_client.get(reverse("broker-account-toggle", args=[account.pk])).status_code == 405
    assert owner_client.get(reverse("position-close", args=[position.pk])).status_code == 405


# --- accounts and keys through the pages -----------------------------------------------------------


def test_create_a_paper_account_and_see_its_key_exactly_once(owner_client, owner, client):
    response = owner_client.post(reverse("broker-account-new"),
                                 {"label": "Swing", "currency": "USDT", "paper_capital": "25000"})
    account = BrokerAccount.objects.get(owner=owner, label="Swing")
    assert response.status_code == 302 and response.url == reverse("broker-account", args=[account.pk])
    assert (account.broker, account.mode, account.currency) == ("paper", "paper", "USDT")
    assert account.paper_capital == account.balance == D("25000")

    first = owner_client.get(response.url).content.decode()
    assert "only time the full key is shown" in first
    start = first.index('data-testid="webhook-url">') + len('data-testid="webhook-url">')
    url = first[start:first.index("</code>", start)]
    raw_key = url.rsplit("/", 1)[1]
    assert raw_key.startswith("tf_") and len(raw_key) > 40
    assert raw_key.startswith(account.webhook_key.prefix)

    second = owner_client.get(response.url).content.decode()
    assert raw_key not in second
    assert account.webhook_key.masked in second
    assert "only time the full key is shown" not in second
    assert raw_key not in owner_client.get(reverse("broker-accounts")).content.decode()

    # The key shown is the real one: an alert with it lands on the new account.
    sent = client.post(url.split("127.0.0.1:8000", 1)[-1], data=json.dumps(
        {"version": "unify.v1", "intent": {"side": "buy", "symbol": "ETHUSDT", "qty": 1, "price": 3000}}),
        content_type="text/plain")
    assert sent.status_code == 202
    assert WebhookLog.objects.get(status=202).account == account


def test_create_account_form_errors(owner_client, owner):
    response = owner_client.post(reverse("broker-account-new"), {"label": "", "currency": "EUR", "paper_capital": "0"})
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"label", "currency", "paper_capital"}
    assert not BrokerAccount.objects.filter(owner=owner).exists()


def test_regenerate_from_the_page_shows_the_new_key_once_and_kills_the_old(owner_client, paper, client):
    account, old_key = paper
    response = owner_client.post(reverse("broker-account-regenerate", args=[account.pk]))
    assert response.status_code == 302
    page = owner_client.get(response.url).content.decode()
    assert "only time the full key is shown" in page
    new_prefix = AccountApiKey.objects.get(account=account).prefix
    assert f"/api/v1/webhooks/{new_prefix}" in page
    assert old_key not in page
    body = json.dumps({"version": "unify.v1", "intent": {"side": "close", "symbol": "X"}})
    assert client.post(f"/api/v1/webhooks/{old_key}", data=body, content_type="text/plain").status_code == 401
    assert f"/api/v1/webhooks/{new_prefix}" not in owner_client.get(response.url).content.decode()


def test_toggle_disables_and_enables(owner_client, paper, client):
    account, key = paper
    owner_client.post(reverse("broker-account-toggle", args=[account.pk]))
    account.refresh_from_db()
    assert not account.enabled
    assert "Disabled" in owner_client.get(reverse("broker-account", args=[account.pk])).content.decode()
    assert client.post(f"/api/v1/webhooks/{key}", data="{}", content_type="text/plain").status_code == 403
    owner_client.post(reverse("broker-account-toggle", args=[account.pk]))
    account.refresh_from_db()
    assert account.enabled


# --- closing a position ----------------------------------------------------------------------------


def test_closing_a_position_from_the_page_books_realized_pnl(owner_client, traded,
                                                             django_capture_on_commit_callbacks):
    account, _, position = traded
    quote_set(broker=Broker.PAPER, symbol="BTCUSDT", price=D("51000"))
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("position-close", args=[position.pk]))
    assert response.status_code == 302 and response.url == reverse("positions")
    position.refresh_from_db()
    assert position.status == Position.Status.CLOSED
    assert position.realized_pnl == D("500")  # 0.5 × (51000 − 50000)
    account.refresh_from_db()
    assert account.balance == D("1000500")
    close = Order.objects.get(leg="close")
    assert (close.side, close.qty, close.avg_price, close.status) == ("sell", D("0.5"), D("51000"), "filled")
    page = owner_client.get(reverse("positions")).content.decode()
    assert "Closing BTCUSDT at market." in page
    assert "500.00" in page and "No open positions" in page


def test_closing_an_already_closed_position_says_so(owner_client, traded, django_capture_on_commit_callbacks):
    _, _, position = traded
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(reverse("position-close", args=[position.pk]))
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("position-close", args=[position.pk]), follow=True)
    assert "BTCUSDT is already closed." in response.content.decode()
    assert Order.objects.filter(leg="close").count() == 1


# --- query counts ----------------------------------------------------------------------------------


def test_dashboard_queries_do_not_grow_with_positions(owner_client, paper, django_assert_max_num_queries):
    account, _ = paper
    position_apply_fill(account=account, symbol="S0", side="buy", qty=D(1), price=D(10))
    owner_client.get(reverse("dashboard"))  # warm the session
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as one:
        assert owner_client.get(reverse("dashboard")).status_code == 200
    for n in range(1, 8):
        position_apply_fill(account=account, symbol=f"S{n}", side="sell", qty=D(1), price=D(10))
    with django_assert_max_num_queries(len(one.captured_queries)):
        page = owner_client.get(reverse("dashboard")).content.decode()
    assert "8 open positions" in page


# --- admin -----------------------------------------------------------------------------------------


@pytest.fixture
def admin_data(traded, other):
    account, _, _ = traded
    paper_account(owner=other, label="Other paper")
    Instrument.objects.create(broker=Broker.KITE, exchange="NFO", tradingsymbol="NIFTY25D1625000PE", name="NIFTY",
                              instrument_type="PE", strike=D("25000"), lot_size=D("75"))
    return account


def test_every_admin_changelist_renders(client, admin_user, admin_data):
    client.force_login(admin_user)
    assert admin.site._registry, "nothing registered"
    for model, model_admin in admin.site._registry.items():
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert client.get(url).status_code == 200, url
        if model_admin.search_fields:
            assert client.get(url, {"q": "paper"}).status_code == 200, f"{url}?q="


def test_admin_change_pages_render(client, admin_user, admin_data):
    client.force_login(admin_user)
    for model in admin.site._registry:
        obj = model._default_manager.first()
        if obj is None:
            continue
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[obj.pk])
        assert client.get(url).status_code == 200, url


def test_customers_cannot_open_the_admin(owner_client):
    response = owner_client.get(reverse("admin:brokers_brokeraccount_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response.url


def test_broker_account_admin_never_renders_credentials(client, admin_user, owner):
    account, _ = paper_account(owner=owner, label="Kite main", broker=Broker.KITE, mode=BrokerAccount.Mode.LIVE,
                               api_key="KITEAPIKEY123", api_secret="KITESECRET456", access_token="ACCESSTOKEN789")
    client.force_login(admin_user)
    pages = [
        client.get(reverse("admin:brokers_brokeraccount_change", args=[account.pk])),
        client.get(reverse("admin:brokers_brokeraccount_add")),
        client.get(reverse("admin:brokers_brokeraccount_changelist")),
        client.get(reverse("admin:brokers_accountapikey_change", args=[account.webhook_key.pk])),
    ]
    for response in pages:
        assert response.status_code == 200
        page = response.content.decode()
        for secret in ("KITEAPIKEY123", "KITESECRET456", "ACCESSTOKEN789", account.webhook_key.key_hash):
            assert secret not in page
        for field in ('name="api_key"', 'name="api_secret"', 'name="access_token"', 'name="key_hash"'):
            assert field not in page
    assert "Kite main" in pages[0].content.decode()


def test_admin_can_save_a_broker_account_without_touching_credentials(client, admin_user, owner):
    account, _ = paper_account(owner=owner, label="Kite main", broker=Broker.KITE, mode=BrokerAccount.Mode.LIVE,
                               api_key="KITEAPIKEY123", api_secret="KITESECRET456")
    client.force_login(admin_user)
    url = reverse("admin:brokers_brokeraccount_change", args=[account.pk])
    form = client.get(url).context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update(label="Kite renamed", enabled="")
    data = {k: v for k, v in data.items() if v is not False}
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    account.refresh_from_db()
    assert (account.label, account.enabled) == ("Kite renamed", False)
    assert (account.api_key, account.api_secret) == ("KITEAPIKEY123", "KITESECRET456")
