"""Signal bots end to end: the admin creates a bot, customers subscribe with their own overrides, one alert
trades for every subscriber (the real ``binance.Client`` against the local Binance where it says so)."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from bots.models import Bot, Subscription
from bots.services import (
    bot_create,
    effective_config,
    subscription_create,
    subscription_pause,
    subscription_resume,
    subscription_unsubscribe,
)
from brokers.models import Execution, Order, Position
from brokers.services import account_create
from tests import factories
from tests.protocol.binance_server import BinanceServer
from webhooks.models import Signal

D = Decimal


@pytest.fixture
def bot(db):
    bot, secret = bot_create(name="Scalper BTC 5min", market_type="futures", broker="binance", default_leverage=10,
                             default_margin=D("100"), default_stop_loss_pct=D("2.5"), default_take_profit_pct=D("5"))
    bot.raw_secret = secret
    return bot


@pytest.fixture
def fire(client, django_capture_on_commit_callbacks):
    def _fire(bot, action: str = "buy", **fields) -> Signal:
        body = {"ticker": "BTCUSDT", "action": action, "secret": bot.raw_secret, "price": 95000, **fields}
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(f"/api/v1/bots/webhook/master/{bot.webhook_path}", data=json.dumps(body),
                                   content_type="text/plain")
        assert response.status_code == 202, response.content
        return Signal.objects.get(pk=response.json()["signal_id"])
    return _fire


def paper_sub(bot, user, **overrides) -> Subscription:
    account, _ = factories.paper_account(owner=user, label=f"Paper of {user.email}")
    return subscription_create(user=user, bot=bot, account=account, **overrides)


# --- admin ----------------------------------------------------------------------------------------------------


def test_admin_creates_a_bot_and_sees_its_webhook_url_and_message_once(client, admin_user):
    client.force_login(admin_user)
    response = client.post("/admin/bots/bot/add/", {
        "name": "Scalper BTC 5min", "description": "EMA cross", "market_type": "futures", "broker": "binance",
        "status": "active", "webhook_path": "", "default_leverage": 10, "default_margin": "100",
        "margin_currency": "USD", "default_lots": 1, "default_stop_loss_pct": "2.5", "default_take_profit_pct": "5",
        "symbols": "btcusdt; ethusdt", "rate_limit": "10/m", "max_lag_seconds": ""}, follow=True)
    assert response.status_code == 200, response.content
    bot = Bot.objects.get()
    assert bot.webhook_path.startswith("scalper-btc-5min-") and bot.symbols == "BTCUSDT, ETHUSDT"
    assert bot.created_by == admin_user and len(bot.secret) > 40
    page = response.content.decode()
    assert f"http://127.0.0.1:8000/api/v1/bots/webhook/master/{bot.webhook_path}" in page
    message = re.search(r'data-testid="bot-message">([^<]*)<', page).group(1).replace("&quot;", '"')
    assert message.startswith('{"ticker": "{{ticker}}", "action": "buy", "secret": "' + bot.secret + '"')
    assert '"price": {{close}}' in message
    # TradingView substitutes the placeholders, then the message is valid JSON.
    assert json.loads(message.replace("{{ticker}}", "BTCUSDT").replace("{{close}}", "95000.5")
                      .replace("{{strategy.order.id}}-{{timenow}}", "x"))["secret"] == bot.secret
    again = client.get(f"/admin-tools/bots/{bot.pk}/").content.decode()
    assert bot.secret not in again and "shown only right after creation or rotation" in again


def test_admin_rotates_the_secret_and_sees_it_once_in_a_message(client, admin_user, bot):
    client.force_login(admin_user)
    old = bot.secret
    response = client.post("/admin/bots/bot/", {"action": "rotate_secret", "_selected_action": [bot.pk]},
                           follow=True)
    bot.refresh_from_db()
    assert bot.secret != old and bot.secret in response.content.decode()
    assert bot.secret in client.get(f"/admin-tools/bots/{bot.pk}/").content.decode()
    assert bot.secret not in client.get(f"/admin-tools/bots/{bot.pk}/").content.decode()


def test_admin_page_is_staff_only(client, owner, bot):
    client.force_login(owner)
    response = client.get(f"/admin-tools/bots/{bot.pk}/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_pauses_a_bot(client, admin_user, bot, fire):
    client.force_login(admin_user)
    client.post("/admin/bots/bot/", {"action": "pause_bots", "_selected_action": [bot.pk]})
    bot.refresh_from_db()
    assert bot.status == "paused"


def test_signal_admin_shows_the_bot_and_its_counters(client, admin_user, bot, owner, fire):
    paper_sub(bot, owner)
    fire(bot)
    client.force_login(admin_user)
    page = client.get("/admin/webhooks/signal/").content.decode()
    assert "Scalper BTC 5min" in page and "column-successful" in page


# --- subscribing ------------------------------------------------------------------------------------------------


def test_customer_subscribes_through_the_page_with_overrides(client, owner, bot):
    account, _ = factories.paper_account(owner=owner)
    client.force_login(owner)
    assert client.get(f"/bots/{bot.pk}/subscribe/").status_code == 200
    response = client.post(f"/bots/{bot.pk}/subscribe/", {"account": account.pk, "margin": "200", "leverage": "15",
                                                          "stop_loss_pct": "1.5", "take_profit_pct": "8",
                                                          "max_daily_loss": "500", "max_concurrent_positions": "3"})
    assert response.status_code == 302, response.content
    sub = Subscription.objects.get()
    assert (sub.user, sub.account, sub.margin, sub.leverage, sub.max_concurrent_positions) == (
        owner, account, D("200"), 15, 3)
    assert "Scalper BTC 5min" in client.get("/bots/subscriptions/").content.decode()


def test_subscribing_needs_an_own_account_of_the_bots_broker(owner, other, bot):
    kite = factories.kite_account(owner=owner)
    with pytest.raises(ValidationError, match="trades on Binance"):
        subscription_create(user=owner, bot=bot, account=kite)
    others, _ = factories.paper_account(owner=other)
    with pytest.raises(ValidationError, match="your own"):
        subscription_create(user=owner, bot=bot, account=others)
    mine, _ = factories.paper_account(owner=owner)
    subscription_create(user=owner, bot=bot, account=mine)
    with pytest.raises(ValidationError, match="already subscribed"):
        subscription_create(user=owner, bot=bot, account=mine)


def test_effective_config_override_wins_and_zero_is_a_value(owner, bot):
    sub = paper_sub(bot, owner, margin=D("200"), stop_loss_pct=D("0"))
    cfg = effective_config(sub)
    assert (cfg.margin, cfg.leverage, cfg.stop_loss_pct, cfg.take_profit_pct) == (D("200"), 10, D("0"), D("5"))


def test_other_customers_get_404_on_my_subscription(client, owner, other, bot):
    sub = paper_sub(bot, owner)
    client.force_login(other)
    assert client.post(f"/bots/subscriptions/{sub.pk}/pause/").status_code == 404
    assert client.post(f"/bots/subscriptions/{sub.pk}/unsubscribe/").status_code == 404
    assert "Paper of owner" not in client.get("/bots/subscriptions/").content.decode()
    sub.refresh_from_db()
    assert sub.status == "active"
    client.force_login(owner)
    assert client.post(f"/bots/subscriptions/{sub.pk}/pause/").status_code == 302
    sub.refresh_from_db()
    assert sub.status == "paused"


def test_archived_bots_are_404_for_customers(client, owner, bot):
    bot.status = "archived"
    bot.save()
    client.force_login(owner)
    assert client.get(f"/bots/{bot.pk}/").status_code == 404
    assert client.get(f"/bots/{bot.pk}/subscribe/").status_code == 404


# --- one alert, every subscriber ------------------------------------------------------------------------------


@pytest.fixture
def binance(binance, settings):  # the conftest server, with live accounts allowed to trade
    settings.LIVE_TRADING_ENABLED = True
    return binance


def binance_sub(bot, user, server: BinanceServer, key: tuple[str, str] | None = None, **overrides):
    api_key, api_secret = key or server.add_account()
    account, _ = account_create(owner=user, label="Binance", broker="binance", mode="live", currency="USDT",
                                api_key=api_key, api_secret=api_secret, options={"market": "futures"})
    return subscription_create(user=user, bot=bot, account=account, **overrides)


@pytest.mark.slow
def test_one_alert_trades_for_two_subscribers_with_their_own_sizes_and_stops(binance, bot, owner, other, fire):
    mine = binance_sub(bot, owner, binance)
    theirs = binance_sub(bot, other, binance, margin=D("300"), leverage=5, stop_loss_pct=D("1.5"),
                         take_profit_pct=D("8"))

    signal = fire(bot, price=95000)

    signal.refresh_from_db()
    assert (signal.total_subscribers, signal.successful, signal.failed, signal.rejected) == (2, 2, 0, 0)
    first = Execution.objects.get(subscription=mine)
    second = Execution.objects.get(subscription=theirs)
    for execution in (first, second):
        assert (execution.status, execution.reason_code) == ("filled", ""), execution.reason
        assert execution.latency_ms > 0
        # Binance filled at its price, 95234.5, against the alert's 95000: 234.5 worse on a buy = 24.68 bps.
        assert (execution.slippage, execution.slippage_bps) == (D("234.5"), D("24.68"))
    # 100 × 10 ÷ 95000 = 0.01052… → 0.010 (step 0.001); 300 × 5 ÷ 95000 = 0.01578… → 0.015.
    orders = {r.api_key: r.params for r in binance.calls("/fapi/v1/order", "POST")}
    assert orders[mine.account.api_key]["quantity"] == "0.01"
    assert orders[theirs.account.api_key]["quantity"] == "0.015"
    leverage = {r.api_key: r.params["leverage"] for r in binance.calls("/fapi/v1/leverage")}
    assert leverage == {mine.account.api_key: "10", theirs.account.api_key: "5"}
    # SL/TP from each subscriber's own %, on the 0.1 tick, as algo orders.
    stops = {(r.api_key, r.params["type"]): r.params["triggerPrice"] for r in binance.calls("/fapi/v1/algoOrder",
                                                                                              "POST")}
    assert stops[(mine.account.api_key, "STOP_MARKET")] == "92853.6"  # 95234.5 × 0.975
    assert stops[(mine.account.api_key, "TAKE_PROFIT_MARKET")] == "99996.2"  # × 1.05
    assert stops[(theirs.account.api_key, "STOP_MARKET")] == "93806"  # × 0.985 = 93805.98
    assert stops[(theirs.account.api_key, "TAKE_PROFIT_MARKET")] == "102853.3"  # × 1.08
    # The records (seed 004 bot_signal_executions): order id, executed price and qty, SL/TP prices.
    main = Order.objects.get(execution=second, leg="main")
    assert (main.status, main.avg_price, main.filled_qty) == ("filled", D("95234.5"), D("0.015"))
    assert main.broker_order_id and main.client_order_id.startswith("TF")
    held = Position.objects.get(account=theirs.account)
    assert (held.qty, held.stop_loss, held.take_profit, held.meta) == (D("0.015"), D("93806"), D("102853.3"),
                                                                        {"bot": bot.pk})


@pytest.mark.slow
def test_a_subscriber_whose_broker_fails_does_not_affect_the_other(binance, bot, owner, other, fire):
    healthy = binance_sub(bot, owner, binance)
    broken = binance_sub(bot, other, binance, key=("0" * 64, "unknown-secret"))  # Binance: -2015 for this key

    signal = fire(bot)

    assert Execution.objects.get(subscription=healthy).status == "filled"
    failed = Execution.objects.get(subscription=broken)
    assert (failed.status, failed.reason_code) == ("failed", "-2015")
    assert "Binance refused the API key" in failed.reason
    signal.refresh_from_db()
    assert (signal.successful, signal.failed, signal.rejected) == (1, 1, 0)
    # Refused at its first call (the leverage): the healthy subscriber's order went through all the same.
    assert [r.api_key for r in binance.calls("/fapi/v1/order", "POST")] == [healthy.account.api_key]


@pytest.mark.slow
def test_with_a_queue_the_main_order_goes_first_and_its_stops_in_a_follow_up_run(binance, bot, owner, client, settings,
                                                                               django_capture_on_commit_callbacks,
                                                                               monkeypatch):
    """Workers with a real queue: the main order is acknowledged, the execution is queued again (behind the other
    subscribers' main orders) and that run places the SL/TP, never resending the main order or deciding again."""
    from bots.fanout import bot_signal_fan_out
    from brokers.tasks import execution_run_task

    sub = binance_sub(bot, owner, binance)
    body = {"ticker": "BTCUSDT", "action": "buy", "secret": bot.raw_secret, "price": 95000}
    with django_capture_on_commit_callbacks(execute=False):  # the fan-out is run by hand below
        response = client.post(f"/api/v1/bots/webhook/master/{bot.webhook_path}", data=json.dumps(body),
                               content_type="text/plain")
    [pk] = bot_signal_fan_out(signal_id=response.json()["signal_id"])
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.BOT_DEFER_PROTECTION = True  # off by default; this test is about the deferred mode
    queued = []
    monkeypatch.setattr(execution_run_task, "apply_async", lambda args, **kw: queued.append(args))

    execution_run_task.apply(args=(pk,))

    assert queued == [(pk,)]
    execution = Execution.objects.get(pk=pk)
    assert execution.status == "running" and execution.latency_ms > 0 and execution.slippage == D("234.5")
    assert len(binance.calls("/fapi/v1/order", "POST")) == 1 and binance.calls("/fapi/v1/algoOrder", "POST") == []
    assert Order.objects.get(execution=execution, leg="main").status == "filled"
    latency = execution.latency_ms

    owner.trading_settings.auto_trade = False  # a fresh decision would now refuse: the resumed run does not ask
    owner.trading_settings.save()
    execution_run_task.apply(args=(pk,))

    execution.refresh_from_db()
    assert (execution.status, execution.reason_code, execution.latency_ms) == ("filled", "", latency)
    assert queued == [(pk,)]
    assert len(binance.calls("/fapi/v1/order", "POST")) == 1
    assert sorted(r.params["type"] for r in binance.calls("/fapi/v1/algoOrder", "POST")) == [
        "STOP_MARKET", "TAKE_PROFIT_MARKET"]
    held = Position.objects.get(account=sub.account)
    assert (held.qty, held.stop_loss, held.take_profit) == (D("0.01"), D("92853.6"), D("99996.2"))


def test_with_a_queue_a_lost_follow_up_is_resumed_by_the_sweeper(owner, bot, fire, settings):
    """The deferred execution waits ``running`` with an expired lease: the sweeper re-enqueues it."""
    settings.BOT_DEFER_PROTECTION = True
    from django.utils import timezone

    from brokers.tasks import executions_sweep

    paper_sub(bot, owner)
    signal = fire(bot)
    execution = Execution.objects.get(signal=signal)
    Execution.objects.filter(pk=execution.pk).update(status="running", lease_until=timezone.now())
    assert executions_sweep() == 1


def test_redelivered_fan_out_and_tasks_change_nothing(owner, other, bot, fire):
    from bots.tasks import bot_signal_fanout_task

    paper_sub(bot, owner)
    paper_sub(bot, other)
    signal = fire(bot)
    for _ in range(3):  # the broker redelivers the fan-out message (worker lost after it committed)
        bot_signal_fanout_task.apply(args=(str(signal.pk),))
    assert Execution.objects.filter(signal=signal).count() == 2
    assert Order.objects.count() == 2 and Position.objects.filter(qty__gt=0).count() == 2
    signal.refresh_from_db()
    assert (signal.total_subscribers, signal.successful) == (2, 2)


# --- pause, close-only, exits ---------------------------------------------------------------------------------


def test_paused_subscription_gets_nothing_and_resumes(owner, other, bot, fire):
    sub = paper_sub(bot, owner)
    paper_sub(bot, other)
    subscription_pause(subscription=sub)
    signal = fire(bot)
    assert signal.total_subscribers == 1 and not Execution.objects.filter(subscription=sub).exists()
    subscription_resume(subscription=sub)
    assert fire(bot, id="second").total_subscribers == 2


def test_close_only_skips_entries_and_still_executes_exits(owner, other, bot, fire):
    leaving = paper_sub(bot, owner)
    staying = paper_sub(bot, other)
    fire(bot, id="open")
    subscription_unsubscribe(subscription=leaving, close_only=True)

    entry = fire(bot, id="add", ticker="ETHUSDT", price=3000)
    assert entry.total_subscribers == 1
    assert not Execution.objects.filter(signal=entry, subscription=leaving).exists()

    close = fire(bot, "close", id="close")
    assert close.total_subscribers == 2
    closed = Execution.objects.get(signal=close, subscription=leaving)
    assert closed.status == "filled", closed.reason
    assert not Position.objects.filter(account=leaving.account, status="open").exists()
    assert Position.objects.filter(account=staying.account, symbol="ETHUSDT", status="open").exists()


def test_unsubscribed_gets_no_exits_either(owner, bot, fire):
    sub = paper_sub(bot, owner)
    fire(bot, id="open")
    subscription_unsubscribe(subscription=sub, close_only=False)
    assert fire(bot, "close", id="close").total_subscribers == 0
    assert Position.objects.get(account=sub.account).status == "open"


def test_close_all_closes_only_this_bots_positions(owner, bot, fire):
    sub = paper_sub(bot, owner)
    other_bot, other_secret = bot_create(name="Other bot", market_type="futures")
    other_bot.raw_secret = other_secret
    subscription_create(user=owner, bot=other_bot, account=sub.account)
    fire(bot, id="btc")
    fire(bot, id="eth", ticker="ETHUSDT", price=3000)
    fire(other_bot, id="sol", ticker="SOLUSDT", price=180)

    signal = fire(bot, "close_all", id="all")

    execution = Execution.objects.get(signal=signal)
    assert execution.status == "filled", execution.reason
    assert sorted(execution.orders.values_list("leg", flat=True)) == ["close_1", "close_2"]
    open_now = set(Position.objects.filter(account=sub.account, status="open").values_list("symbol", flat=True))
    assert open_now == {"SOLUSDT"}


def test_close_without_a_bot_position_is_recorded_as_rejected(owner, bot, fire):
    paper_sub(bot, owner)
    signal = fire(bot, "close")
    execution = Execution.objects.get(signal=signal)
    assert (execution.status, execution.reason_code) == ("rejected", "no_position")
    signal.refresh_from_db()
    assert (signal.successful, signal.failed, signal.rejected) == (0, 0, 1)


def test_max_concurrent_positions_limit_rejects_new_entries(owner, bot, fire):
    sub = paper_sub(bot, owner, max_concurrent_positions=1)
    fire(bot, id="1")
    signal = fire(bot, id="2", ticker="ETHUSDT", price=3000)
    execution = Execution.objects.get(signal=signal)
    assert (execution.status, execution.reason_code) == ("rejected", "max_concurrent_positions")
    assert Position.objects.filter(account=sub.account, status="open").count() == 1


@pytest.mark.parametrize(("closed_at", "blocked"), [("2026-03-10T18:00:00+00:00", False),  # 23:30 IST yesterday
                                                     ("2026-03-10T19:00:00+00:00", True)])  # 00:30 IST today
def test_a_bots_daily_loss_counts_from_the_traders_midnight(owner, bot, fire, closed_at, blocked):
    import time_machine
    from django.utils.dateparse import parse_datetime

    owner.trading_settings.timezone = "Asia/Kolkata"
    owner.trading_settings.save()
    sub = paper_sub(bot, owner, max_daily_loss=D("500"))
    Position.objects.create(account=sub.account, symbol="SOLUSDT", side="long", qty=D("0"), avg_price=D("180"),
                            last_price=D("170"), realized_pnl=D("-600"), status="closed",
                            closed_at=parse_datetime(closed_at), meta={"bot": bot.pk})
    with time_machine.travel(parse_datetime("2026-03-10T20:00:00+00:00"), tick=False):  # 01:30 IST
        signal = fire(bot, id="after-midnight")
    execution = Execution.objects.get(signal=signal)
    if blocked:
        assert (execution.status, execution.reason_code) == ("rejected", "max_daily_loss")
        assert "600.00 lost today" in execution.reason
    else:
        assert execution.status == "filled", execution.reason


def test_paper_entry_is_margin_times_leverage_over_price(owner, bot, fire):
    sub = paper_sub(bot, owner, margin=D("190"), leverage=5)
    fire(bot, price="95000")
    position = Position.objects.get(account=sub.account)
    assert position.qty == D("0.01")  # 190 × 5 ÷ 95000
    assert (position.stop_loss, position.take_profit) == (D("92625"), D("99750"))  # −2.5 %, +5 %


def test_options_bot_sells_the_strike_with_its_hedge_for_the_subscribers_lots(owner, fire):
    bot, secret = bot_create(name="NIFTY options", market_type="options", broker="kite", default_lots=2)
    bot.raw_secret = secret
    sub = paper_sub(bot, owner, lots=4)
    signal = fire(bot, ticker="NIFTY", strike=25000, type="PE", price=24481)
    execution = Execution.objects.get(signal=signal)
    assert execution.status == "filled", execution.reason
    legs = dict(execution.orders.values_list("leg", "qty"))
    assert legs["main"] == 4 * 65 and legs["hedge"] == 1 * 65  # 30 % of 4 lots, rounded
    assert set(Position.objects.filter(account=sub.account).values_list("meta__bot", flat=True)) == {bot.pk}
