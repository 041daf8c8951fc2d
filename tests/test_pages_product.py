"""The product pages beyond the basics: onboarding checklist, timezone, money with currency, order filters,
webhook log detail, the bot's track record, and the staff live page."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.urls import reverse

from accounts.models import AuditLog, TradingSettings
from bots.services import bot_create, subscription_create
from brokers.adapters.paper import quote_set
from brokers.models import Execution, Order, Position
from brokers.services import position_apply_fill, position_close
from tests.factories import kite_account, paper_account
from webhooks.models import WebhookLog

D = Decimal


def alert(client, key: str, symbol: str = "BTCUSDT", side: str = "buy", qty: str = "0.5", price: str = "50000",
          **extra):
    body = {"version": "unify.v1", "intent": {"side": side, "symbol": symbol, "qty": qty, "price": price}, **extra}
    return client.post(f"/api/v1/webhooks/{key}", data=json.dumps(body), content_type="text/plain")


def steps(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-step="(\w+)" data-done="(true|false)"', page))


# --- onboarding --------------------------------------------------------------------------------------------


def test_the_checklist_follows_what_the_customer_did_and_goes_away_when_done(
        owner_client, owner, client, django_capture_on_commit_callbacks):
    dashboard = reverse("dashboard")
    page = owner_client.get(dashboard).content.decode()
    assert steps(page) == {"connect": "false", "copy": "false", "alert": "false", "trade": "false"}
    assert f'href="{reverse("broker-account-new")}" data-testid="onboarding-connect"' in page

    account, key = paper_account(owner=owner)
    page = owner_client.get(dashboard).content.decode()
    assert steps(page) == {"connect": "true", "copy": "false", "alert": "false", "trade": "false"}
    assert f'{reverse("broker-account", args=[account.pk])}#webhook" data-testid="onboarding-copy"' in page

    assert owner_client.post(reverse("broker-account-webhook-copied", args=[account.pk])).status_code == 204
    assert steps(owner_client.get(dashboard).content.decode())["copy"] == "true"

    # A refused alert still counts as the test alert arriving; only a fill is the first trade.
    with django_capture_on_commit_callbacks(execute=True):
        assert alert(client, key, price="-1").status_code == 422
    assert steps(owner_client.get(dashboard).content.decode())["trade"] == "false"
    with django_capture_on_commit_callbacks(execute=True):
        assert alert(client, key).status_code == 202
    assert Execution.objects.filter(status=Execution.Status.FILLED).exists()
    page = owner_client.get(dashboard).content.decode()
    assert 'data-testid="onboarding"' not in page  # every step done: the checklist is gone
    assert "BTCUSDT" in page


def test_a_key_used_by_hand_counts_as_copied(owner_client, owner, client):
    _, key = paper_account(owner=owner)
    alert(client, key, price="-1")  # refused, but the URL with the key was pasted somewhere
    assert steps(owner_client.get(reverse("dashboard")).content.decode())["copy"] == "true"


def test_recording_a_copy_needs_the_owner_and_a_post(client, paper, other):
    account, _ = paper
    url = reverse("broker-account-webhook-copied", args=[account.pk])
    client.force_login(other)
    assert client.post(url).status_code == 404
    assert not AuditLog.objects.filter(action="webhook.copied").exists()
    client.force_login(account.owner)
    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 204
    assert AuditLog.objects.get(action="webhook.copied").user == account.owner


def test_the_account_page_offers_copy_buttons_and_a_test_alert(owner_client, paper):
    account, _ = paper
    page = owner_client.get(reverse("broker-account", args=[account.pk])).content.decode()
    assert 'data-copy="example-unify"' in page and 'data-testid="send-test-alert"' in page
    body = json.loads(re.search(r'<pre id="test-alert-body">(.*?)</pre>', page, re.S).group(1).replace("&quot;", '"'))
    assert body["version"] == "unify.v1" and body["intent"]["price"]  # a paper fill needs a price
    assert 'data-testid="test-alert-url"' in page  # the key is not shown any more: the customer pastes the URL


def test_a_live_account_offers_no_test_alert(owner_client, owner):
    account = kite_account(owner=owner, mode="live")
    page = owner_client.get(reverse("broker-account", args=[account.pk])).content.decode()
    assert 'data-testid="send-test-alert"' not in page and "would be a real order" in page


# --- timezone and money ------------------------------------------------------------------------------------


def test_times_are_shown_in_the_users_timezone(owner_client, owner, client, django_capture_on_commit_callbacks):
    _, key = paper_account(owner=owner)
    with time_machine.travel(datetime(2026, 1, 15, 12, 0, tzinfo=UTC), tick=False), \
            django_capture_on_commit_callbacks(execute=True):
        alert(client, key)
    page = owner_client.get(reverse("executions")).content.decode()
    assert "2026-01-15 17:30:00 IST" in page  # the default timezone, Asia/Kolkata
    TradingSettings.objects.filter(user=owner).update(timezone="America/New_York")
    for name in ("executions", "orders", "webhook-log"):
        page = owner_client.get(reverse(name)).content.decode()
        assert "2026-01-15 07:00:00 EST" in page, name
    assert 'data-tz="America/New_York"' in page


def test_an_unknown_saved_timezone_falls_back_to_utc(owner_client, owner):
    TradingSettings.objects.filter(user=owner).update(timezone="Atlantis/Capital")
    assert 'data-tz="UTC"' in owner_client.get(reverse("dashboard")).content.decode()


def test_dashboard_money_carries_its_currency_and_todays_realized_pnl(owner_client, owner):
    inr, _ = paper_account(owner=owner, label="Rupees")
    usdt, _ = paper_account(owner=owner, label="Tether", currency="USDT")
    position_apply_fill(account=inr, symbol="NIFTYBEES", side="buy", qty=D(10), price=D(250))
    Position.objects.filter(account=inr).update(last_price=D(252))
    won = position_apply_fill(account=usdt, symbol="ETHUSDT", side="buy", qty=D(1), price=D(3000))[0]
    position_apply_fill(account=usdt, symbol="ETHUSDT", side="sell", qty=D(1), price=D(3100))
    assert Position.objects.get(pk=won.pk).status == Position.Status.CLOSED
    page = owner_client.get(reverse("dashboard")).content.decode()
    assert re.search(r'data-testid="unrealized"[^>]*>20.00 INR<', page)
    realized = re.search(r'data-testid="realized-today">(.*?)</div>', page, re.S).group(1)
    assert "100.00 USDT" in realized and "INR" not in realized
    equity = json.loads(re.search(r'id="equity-data"[^>]*>(.*?)</script>', page, re.S).group(1))
    assert equity[0][1] == "0" and len(equity) == 1  # the curve is in the first account's currency (INR)


def test_empty_pages_say_what_to_do_next(owner_client):
    for name, hint in (("orders", "find your webhook URL"), ("webhook-log", "send a test alert"),
                       ("executions", "Send an alert to your webhook URL"), ("positions", "Send an alert")):
        assert hint in owner_client.get(reverse(name)).content.decode(), name


# --- orders: filters and pagination ------------------------------------------------------------------------


@pytest.fixture
def many_orders(owner, other):
    mine, _ = paper_account(owner=owner, label="Mine")
    second, _ = paper_account(owner=owner, label="Second")
    theirs, _ = paper_account(owner=other, label="Theirs")
    rows = [Order(account=mine if n % 2 else second, leg="main", client_order_id=f"tf-{n}", symbol="BTCUSDT" if n < 60
                  else "ETHUSDT", side="buy" if n % 3 else "sell", qty=D(1), status=Order.Status.FILLED if n % 5
                  else Order.Status.REJECTED) for n in range(70)]
    rows.append(Order(account=theirs, leg="main", client_order_id="tf-x", symbol="ETHUSDT", side="buy", qty=D(1)))
    Order.objects.bulk_create(rows)
    return mine, second, theirs


def count_rows(page: str) -> int:
    return page.count('data-testid="order-row"')


def test_orders_filter_by_symbol_status_side_and_account(owner_client, many_orders):
    mine, second, theirs = many_orders
    url = reverse("orders")
    assert count_rows(owner_client.get(url, {"symbol": "eth"}).content.decode()) == 10
    assert count_rows(owner_client.get(url, {"status": "rejected"}).content.decode()) == 14
    assert count_rows(owner_client.get(url, {"symbol": "ETH", "side": "sell"}).content.decode()) == 4
    page = owner_client.get(url, {"account": mine.pk, "symbol": "ETH"}).content.decode()
    assert count_rows(page) == 5 and "Second" not in page.split("<tbody>", 1)[1]
    # Another customer's account is not a choice: the filter is refused and shows none of their orders.
    page = owner_client.get(url, {"account": theirs.pk, "symbol": "ETH"}).content.decode()
    assert "Select a valid choice" in page and count_rows(page) == 10 and "tf-x" not in page
    assert "No orders match these filters" in owner_client.get(url, {"symbol": "DOGE"}).content.decode()


def test_orders_paginate_and_keep_the_filters(owner_client, many_orders):
    url = reverse("orders")
    first = owner_client.get(url, {"symbol": "BTC"}).content.decode()
    assert count_rows(first) == 50 and "Page 1 of 2" in first
    assert "?symbol=BTC&amp;page=2" in first
    second = owner_client.get(url, {"symbol": "BTC", "page": 2}).content.decode()
    assert count_rows(second) == 10 and "ETHUSDT" not in second.split("<tbody>", 1)[1]


# --- webhook log detail ------------------------------------------------------------------------------------


def test_webhook_log_detail_shows_payload_response_latency_and_error(owner_client, paper, client, other):
    account, key = paper
    alert(client, key, side="hold")
    entry = WebhookLog.objects.get(account=account)
    assert entry.status == 422 and entry.error
    url = reverse("webhook-log-detail", args=[entry.pk])
    assert url in owner_client.get(reverse("webhook-log")).content.decode()
    page = owner_client.get(url).content.decode()
    assert '&quot;side&quot;: &quot;hold&quot;' in page  # the payload, indented
    assert "invalid_fields" in re.search(r'data-testid="log-response">(.*?)</pre>', page, re.S).group(1)
    assert f"{entry.latency_ms} ms" in page and entry.error[:30] in page
    assert key not in page
    client.force_login(other)
    assert client.get(url).status_code == 404


def test_webhook_log_detail_lists_what_the_alert_traded(owner_client, paper, client,
                                                        django_capture_on_commit_callbacks):
    account, key = paper
    with django_capture_on_commit_callbacks(execute=True):
        assert alert(client, key).status_code == 202
    entry = WebhookLog.objects.get(account=account)
    page = owner_client.get(reverse("webhook-log-detail", args=[entry.pk])).content.decode()
    assert 'data-testid="execution-row"' in page and "Filled" in page


# --- bots ----------------------------------------------------------------------------------------------------


def test_bot_page_shows_description_defaults_and_track_record(owner_client, owner):
    bot, _ = bot_create(name="Trend NIFTY", market_type="futures", broker="binance", default_leverage=5,
                        default_margin=D("100"), description="Follows the 20/50 EMA cross on the 15-minute chart.")
    account, _ = paper_account(owner=owner)
    sub = subscription_create(user=owner, bot=bot, account=account)
    for status in ("filled", "filled", "filled", "rejected"):
        Execution.objects.create(account=account, subscription=sub, status=status, intent={"symbol": "BTCUSDT"})
    page = owner_client.get(reverse("bot", args=[bot.pk])).content.decode()
    assert "Follows the 20/50 EMA cross" in page and "× 5" in page
    record = re.search(r'data-testid="track-record">(.*?)</table>', page, re.S).group(1)
    assert "(75 %)" in record and "1 rejected or failed" in record
    assert "has not sent an alert yet" in record


# --- staff live page ---------------------------------------------------------------------------------------


def test_admin_live_page_shows_every_customers_executions_and_open_pnl(client, admin_user, owner, other):
    for user, symbol in ((owner, "NIFTYBEES"), (other, "TATASTEEL")):
        account, _ = paper_account(owner=user)
        Execution.objects.create(account=account, status="filled", intent={"symbol": symbol})
        position_apply_fill(account=account, symbol=symbol, side="buy", qty=D(10), price=D(100))
    Position.objects.update(last_price=D(101))
    client.force_login(admin_user)
    page = client.get(reverse("admin-live")).content.decode()
    assert "NIFTYBEES" in page and "TATASTEEL" in page and owner.email in page and other.email in page
    assert re.search(r'data-testid="admin-open-pnl">.*20.00 INR', page)
    assert reverse("admin-live") in page  # linked from the nav for staff


def test_customers_cannot_open_the_admin_live_page(owner_client):
    response = owner_client.get(reverse("admin-live"))
    assert response.status_code == 302 and "/admin/login/" in response.url
    assert reverse("admin-live") not in owner_client.get(reverse("dashboard")).content.decode()


def test_closing_a_position_books_realized_pnl_today(owner_client, owner, django_capture_on_commit_callbacks):
    account, _ = paper_account(owner=owner)
    position = position_apply_fill(account=account, symbol="NIFTYBEES", side="buy", qty=D(10), price=D(250))[0]
    quote_set(broker="paper", symbol="NIFTYBEES", price=D("247.5"))
    with django_capture_on_commit_callbacks(execute=True):
        position_close(position=position, actor=owner)
    realized = re.search(r'data-testid="realized-today">(.*?)</div>',
                         owner_client.get(reverse("dashboard")).content.decode(), re.S).group(1)
    assert "-25.00 INR" in realized and 'class="neg"' in realized


def test_subscribe_page_groups_every_field_into_overrides_and_limits(owner_client, owner):
    bot, _ = bot_create(name="Scalper", market_type="futures", broker="binance", default_leverage=10,
                        default_margin=D("100"))
    paper_account(owner=owner)
    page = owner_client.get(reverse("bot-subscribe", args=[bot.pk])).content.decode()
    overrides = page.split("<legend>Overrides", 1)[1].split("</fieldset>", 1)[0]
    limits = page.split("<legend>Limits", 1)[1].split("</fieldset>", 1)[0]
    for name in ("margin", "leverage", "lots", "stop_loss_pct", "take_profit_pct"):
        assert f'name="{name}"' in overrides, name
    for name in ("max_daily_loss", "max_concurrent_positions"):
        assert f'name="{name}"' in limits, name
    assert page.count('name="account"') == 1


def test_send_test_alert_from_tradeflow_goes_through_the_webhook_path_without_the_key(
        owner_client, paper, django_capture_on_commit_callbacks):
    from webhooks.models import Signal

    account, _ = paper
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/brokers/{account.pk}/test-alert/", follow=True)
    assert "Test alert sent" in response.content.decode()
    signal = Signal.objects.get(account=account)
    assert signal.intent["symbol"] == "NIFTYBEES" and signal.client_id.startswith("test-")
    log = WebhookLog.objects.get(signal=signal)
    assert (log.status, log.account) == (202, account) and "test alert from the account page" in log.path
    assert Execution.objects.get(signal=signal).status == Execution.Status.FILLED
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(f"/brokers/{account.pk}/test-alert/")
    assert Signal.objects.filter(account=account).count() == 2  # a new id each time: not a duplicate


def test_send_test_alert_refuses_another_customers_account_and_live_accounts(client, other, paper, owner):
    from webhooks.models import Signal

    account, _ = paper
    client.force_login(other)
    assert client.post(f"/brokers/{account.pk}/test-alert/").status_code == 404
    live = kite_account(owner=owner)
    client.force_login(owner)
    page = client.post(f"/brokers/{live.pk}/test-alert/", follow=True).content.decode()
    assert "paper accounts only" in page
    assert not Signal.objects.exists() and not WebhookLog.objects.exists()
