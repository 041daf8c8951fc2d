"""A new customer's first session in a real browser, from sign-up to the Emergency Stop.

sign up (with the e-mail confirmation) → connect a paper account → copy the webhook URL → a TradingView-style
POST → the position appears on the open dashboard without a reload → a price change moves its P&L → close it
→ Emergency Stop. Meanwhile a second customer's dashboard stays empty and their socket never carries the first
customer's rows.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import httpx
import pytest
from playwright.sync_api import expect

from brokers.adapters.paper import quote_set
from brokers.models import BrokerAccount, Position
from brokers.services.prices import prices_mark
from tests import factories
from tests.browser.conftest import PASSWORD, sign_in

pytestmark = [pytest.mark.chromium, pytest.mark.pg, pytest.mark.redis, pytest.mark.slow]

WAIT = 15_000  # ms an expected change on the page may take (a fill runs on the server's task thread)


def alert(symbol: str, side: str, qty: str, price: str, alert_id: str) -> str:
    """A unify.v1 alert as TradingView posts it: the message text, sent as text/plain."""
    return json.dumps({"version": "unify.v1", "id": alert_id, "intent": {
        "side": side, "type": "market", "symbol": symbol, "qty": qty, "price": price}})


def sign_up(page, server, shot, email: str) -> None:
    page.goto(server.url + "/accounts/signup/")
    shot(page, "signup")
    page.fill("input[name=email]", email)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("form[action$='/accounts/signup/'] button[type=submit]")
    expect(page.locator("main")).to_contain_text("Verify Your Email Address", ignore_case=True, timeout=WAIT)
    shot(page, "verify-email-sent")
    page.goto(server.confirmation_link())
    shot(page, "confirm-email")
    page.click("main form button[type=submit]")
    expect(page).to_have_url(server.url + "/", timeout=WAIT)


def app_ready(page) -> None:
    """The page's deferred scripts have run (a click before that would do nothing on a slow machine)."""
    expect(page.locator("html")).to_have_attribute("data-app-ready", "true", timeout=WAIT)


def watch_frames(page) -> list[str]:
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    return frames


def test_new_customer_journey_from_sign_up_to_emergency_stop(server, browser, shot, customer):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the Emergency Stop asks "Are you sure?"

    # Another customer, already trading on paper, watching their own dashboard the whole time.
    other = customer("bystander@example.com")
    factories.paper_account(owner=other, label="Bystander paper")
    other_context = browser.new_context()
    other_page = other_context.new_page()
    other_frames = watch_frames(other_page)
    sign_in(other_page, server, other.email)
    expect(other_page.get_by_test_id("live-status")).to_have_attribute("data-state", "live", timeout=WAIT)

    # 1. Sign up, confirm the e-mail: the dashboard greets with the checklist, nothing done yet.
    sign_up(page, server, shot, "newtrader@example.com")
    checklist = page.get_by_test_id("onboarding")
    expect(checklist).to_be_visible()
    expect(checklist.locator("li[data-done=true]")).to_have_count(0)
    expect(page.get_by_test_id("positions-empty")).to_be_visible()
    shot(page, "dashboard-new")

    # 2. Connect a paper account from the checklist.
    page.get_by_test_id("onboarding-connect").click()
    shot(page, "paper-account-form")
    page.fill("input[name=label]", "My paper")
    page.click("main form button[type=submit]")
    expect(page.get_by_test_id("webhook-url")).to_be_visible()
    account = BrokerAccount.objects.get(owner__email="newtrader@example.com")
    assert account.is_paper and account.enabled

    # 3. Copy the webhook URL with the copy button: the clipboard holds the full URL with its key.
    app_ready(page)
    page.get_by_test_id("copy-webhook").click()
    expect(page.get_by_test_id("copy-webhook")).to_have_attribute("data-copied", "true", timeout=WAIT)
    webhook_url = page.evaluate("navigator.clipboard.readText()")
    assert re.fullmatch(re.escape(server.url) + r"/api/v1/webhooks/tf_[\w-]{20,}", webhook_url), webhook_url
    assert webhook_url == page.get_by_test_id("webhook-url").inner_text().strip()
    shot(page, "account-webhook")

    # 4. The dashboard is open and live; TradingView fires: the position appears without a reload.
    page.goto(server.url + "/")
    expect(page.get_by_test_id("live-status")).to_have_attribute("data-state", "live", timeout=WAIT)
    expect(page.locator("[data-step=connect]")).to_have_attribute("data-done", "true")
    expect(page.locator("[data-step=copy]")).to_have_attribute("data-done", "true")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    reply = httpx.post(webhook_url, content=alert("NIFTYBEES", "buy", "10", "250", "journey-1"),
                       headers={"Content-Type": "text/plain"}, timeout=10)
    assert reply.status_code == 202, reply.text
    row = page.get_by_test_id("position-row")
    expect(row).to_have_count(1, timeout=WAIT)
    expect(row.get_by_test_id("position-symbol")).to_have_text("NIFTYBEES")
    expect(row.get_by_test_id("position-qty")).to_have_text("10")
    expect(page.get_by_test_id("execution-row").first).to_contain_text("Filled", timeout=WAIT)
    expect(page.locator("[data-step=alert]")).to_have_attribute("data-done", "true")  # the checklist follows
    expect(page.locator("[data-step=trade]")).to_have_attribute("data-done", "true")
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "dashboard-position")

    # 5. The price moves (the price feed's round): the row's P&L and the total follow, green then red.
    quote_set(broker="paper", symbol="NIFTYBEES", price=Decimal("252.5"))
    assert prices_mark().changed
    expect(row.get_by_test_id("position-last")).to_have_text("252.5", timeout=WAIT)
    expect(row.get_by_test_id("position-pnl")).to_have_text("25.00 INR")
    expect(row.get_by_test_id("position-pnl")).to_have_class("pos")
    expect(page.get_by_test_id("unrealized")).to_have_text("25.00 INR")
    quote_set(broker="paper", symbol="NIFTYBEES", price=Decimal("249"))
    prices_mark()
    expect(row.get_by_test_id("position-pnl")).to_have_text("-10.00 INR", timeout=WAIT)
    expect(row.get_by_test_id("position-pnl")).to_have_class("neg")
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "dashboard-pnl-moved")

    # 6. Close it from the dashboard: booked at the last price, gone from the open positions.
    row.get_by_test_id("position-close").click()
    expect(page.locator("main")).to_contain_text("Closing NIFTYBEES at market", timeout=WAIT)
    shot(page, "positions-after-close")
    page.goto(server.url + "/")
    expect(page.get_by_test_id("positions-empty")).to_be_visible(timeout=WAIT)
    position = Position.objects.get(account=account, symbol="NIFTYBEES")
    assert position.status == Position.Status.CLOSED and position.realized_pnl == Decimal("-10")
    page.goto(server.url + "/")  # the close may have finished after the page above was rendered
    expect(page.get_by_test_id("realized-today")).to_contain_text("-10.00 INR")
    expect(page.locator("[data-step=trade]")).to_have_count(0)  # every step done: the checklist is gone
    expect(page.get_by_test_id("onboarding")).to_have_count(0)

    # 7. Another alert opens a position; the Emergency Stop closes it and disables the account.
    expect(page.get_by_test_id("live-status")).to_have_attribute("data-state", "live", timeout=WAIT)
    reply = httpx.post(webhook_url, content=alert("TATASTEEL", "sell", "5", "150", "journey-2"),
                       headers={"Content-Type": "text/plain"}, timeout=10)
    assert reply.status_code == 202, reply.text
    expect(page.get_by_test_id("position-row")).to_have_count(1, timeout=WAIT)
    page.get_by_test_id("emergency-stop-button").click()
    expect(page.locator("main")).to_contain_text("Emergency stop executed", timeout=WAIT)
    expect(page.get_by_test_id("positions-empty")).to_be_visible(timeout=WAIT)
    expect(page.get_by_test_id("unrealized")).to_have_text("0.00 INR")
    expect(page.get_by_test_id("equity-chart")).to_have_attribute("data-ready", "true")
    expect(page.get_by_test_id("equity-chart").locator("canvas")).to_have_count(1)
    shot(page, "dashboard-after-emergency-stop")
    account.refresh_from_db()
    assert not account.enabled
    assert not Position.objects.filter(account=account, status=Position.Status.OPEN).exists()
    page.goto(server.url + f"/brokers/{account.pk}/")
    expect(page.locator("main")).to_contain_text("Disabled")
    shot(page, "account-disabled")

    # The bystander's page never showed, nor their socket carried, anything of the first customer's.
    expect(other_page.get_by_test_id("positions-empty")).to_be_visible()
    received = "\n".join(other_frames)
    assert "snapshot" in received  # the socket was up throughout
    for leaked in ("NIFTYBEES", "TATASTEEL", "My paper", f'"account_id": {account.pk},'):
        assert leaked not in received, f"the other customer's socket carried {leaked!r}"
    shot(other_page, "bystander-dashboard")
    context.close()
    other_context.close()


def test_dashboard_on_a_phone_sized_screen(server, browser, shot, customer):
    """390×844 (a phone): nothing wider than the screen but the tables' own scroll, the Stop button in reach."""
    user = customer("phone@example.com")
    _, raw_key = factories.paper_account(owner=user, label="Phone paper")
    reply = httpx.post(f"{server.url}/api/v1/webhooks/{raw_key}", content=alert("NIFTYBEES", "buy", "3", "250", "ph-1"),
                       headers={"Content-Type": "text/plain"}, timeout=10)
    assert reply.status_code == 202, reply.text
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    sign_in(page, server, user.email)
    expect(page.get_by_test_id("position-row")).to_have_count(1, timeout=WAIT)
    expect(page.get_by_test_id("equity-chart")).to_have_attribute("data-ready", "true")
    page_width = page.evaluate("document.documentElement.scrollWidth")
    assert page_width <= 390, f"the page is {page_width}px wide on a 390px screen"
    stop = page.get_by_test_id("emergency-stop-button").bounding_box()
    assert stop and stop["x"] >= 0 and stop["x"] + stop["width"] <= 390 and stop["y"] < 844
    shot(page, "dashboard-390x844")
    context.close()


def test_staff_live_page_streams_every_customers_executions_and_bot_counters(server, browser, shot, customer):
    from bots.services import bot_create, subscription_create

    staff = customer("ops@example.com")
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    trader = customer("trader@example.com")
    account, raw_key = factories.paper_account(owner=trader, label="Trader paper")
    bot, secret = bot_create(name="Scalper BTC", market_type="futures", broker="binance", default_leverage=10,
                             default_margin=Decimal("100"))
    follower = customer("follower@example.com")
    follower_account, _ = factories.paper_account(owner=follower, label="Follower paper", currency="USDT")
    subscription_create(user=follower, bot=bot, account=follower_account)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, server, staff.email)
    page.get_by_test_id("nav-admin-live").click()
    expect(page.get_by_test_id("live-status")).to_have_attribute("data-state", "live", timeout=WAIT)
    counters = page.locator(f'tr[data-bot="{bot.pk}"]')
    expect(counters.locator("[data-counter=filled]")).to_have_text("0")

    # A customer's own alert, then the bot's alert to its follower: both stream in without a reload.
    reply = httpx.post(f"{server.url}/api/v1/webhooks/{raw_key}", content=alert("NIFTYBEES", "buy", "10", "250", "s-1"),
                       headers={"Content-Type": "text/plain"}, timeout=10)
    assert reply.status_code == 202, reply.text
    rows = page.get_by_test_id("admin-executions")
    expect(rows).to_contain_text("NIFTYBEES", timeout=WAIT)
    expect(rows.locator("tr").first).to_contain_text("Filled", timeout=WAIT)
    expect(rows.locator("tr").first).to_contain_text("trader@example.com")  # who, though not on the page at load
    reply = httpx.post(f"{server.url}/api/v1/bots/webhook/master/{bot.webhook_path}", timeout=10,
                       content=json.dumps({"ticker": "BTCUSDT", "action": "buy", "secret": secret, "price": 95000}),
                       headers={"Content-Type": "text/plain"})
    assert reply.status_code == 202, reply.text
    expect(rows).to_contain_text("BTCUSDT", timeout=WAIT)
    expect(rows.locator("tr", has_text="BTCUSDT")).to_contain_text("follower@example.com")
    expect(counters.locator("[data-counter=filled]")).to_have_text("1", timeout=WAIT)
    expect(counters.locator("[data-counter=alerts]")).to_have_text("1")
    expect(page.get_by_test_id("admin-open-count")).to_have_text("2", timeout=WAIT)

    # A price tick moves the total open P&L of every customer.
    quote_set(broker="paper", symbol="NIFTYBEES", price=Decimal("251"))
    prices_mark()
    expect(page.get_by_test_id("admin-open-pnl")).to_contain_text("10.00 INR", timeout=WAIT)
    shot(page, "admin-live")
    context.close()


def test_the_send_test_alert_button_posts_like_tradingview_and_the_trade_shows(server, browser, shot, customer):
    user = customer("tester@example.com")
    account, raw_key = factories.paper_account(owner=user, label="Test paper")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, server, user.email)
    page.get_by_test_id("onboarding-alert").click()  # the checklist's step links to the button
    button = page.get_by_test_id("send-test-alert")
    app_ready(page)
    button.click()
    expect(page.locator("#test-alert-result")).to_contain_text("Paste your webhook URL")  # nothing sent
    page.get_by_test_id("test-alert-url").fill(f"{server.url}/api/v1/webhooks/{raw_key}")
    button.click()
    expect(page.locator("#test-alert-result")).to_contain_text("Test alert accepted (HTTP 202)", timeout=WAIT)
    shot(page, "test-alert-sent")
    page.goto(server.url + "/")
    expect(page.get_by_test_id("position-row")).to_have_count(1, timeout=WAIT)
    expect(page.get_by_test_id("position-symbol")).to_have_text("NIFTYBEES")
    # The key was used (copied by hand), the alert arrived and filled: every step is done, the checklist gone.
    expect(page.get_by_test_id("onboarding")).to_have_count(0)
    page.goto(server.url + "/webhook-log/")
    page.get_by_test_id("log-row").first.locator("a").click()
    expect(page.get_by_test_id("log-status")).to_have_text("202")
    expect(page.get_by_test_id("log-payload")).to_contain_text('"symbol": "NIFTYBEES"')
    shot(page, "webhook-log-detail")
    context.close()


def test_the_dashboard_reconnects_after_the_server_restarts_and_catches_up(server, browser, shot, customer):
    user = customer("reconnect@example.com")
    account, raw_key = factories.paper_account(owner=user, label="Reconnect paper")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, server, user.email)
    status = page.get_by_test_id("live-status")
    expect(status).to_have_attribute("data-state", "live", timeout=WAIT)
    page.evaluate("window.__sameDocument = true")

    server.stop()
    expect(status).to_have_attribute("data-state", "offline", timeout=WAIT)
    expect(status).to_contain_text("reconnecting")
    # While the page is cut off, a position is opened (straight in the database: no server to post to).
    from brokers.services.positions import position_apply_fill

    position, _ = position_apply_fill(account=account, symbol="GOLDBEES", side="buy", qty=Decimal("4"),
                                      price=Decimal("60"))
    server.start()
    expect(status).to_have_attribute("data-state", "live", timeout=30_000)  # backoff: 1 s, 2 s, 4 s…
    row = page.locator(f'tr[data-position="{position.pk}"]')
    expect(row).to_have_count(1, timeout=WAIT)  # the fresh snapshot brought the missed position
    quote_set(broker="paper", symbol="GOLDBEES", price=Decimal("61"))
    prices_mark()
    expect(row.get_by_test_id("position-pnl")).to_have_text("4.00 INR", timeout=WAIT)
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "dashboard-after-reconnect")
    context.close()
