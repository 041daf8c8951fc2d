"""A bot alert's subscribers run as batches (brokers/services/batch.py): the same outcomes as one by one, a fixed
number of statements per batch, and exactly-once through redeliveries, crashes and a concurrent one-by-one run."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from billing.models import BillingAccount
from bots.fanout import bot_signal_fan_out
from bots.services import bot_create, subscription_create
from brokers.models import BrokerAccount, Execution, Order, PaperOrder, Position
from brokers.services import account_create
from brokers.services.batch import executions_run_batch
from brokers.tasks import execution_run_task
from tests import factories
from tests.concurrency import run_at_once
from webhooks.models import Signal

D = Decimal
pytestmark = pytest.mark.django_db


def paper_bot():
    bot, secret = bot_create(name="Batch paper", market_type="futures", broker="binance", default_leverage=10,
                             default_margin=D("100"), default_stop_loss_pct=D("2"), default_take_profit_pct=D("4"))
    bot.raw_secret = secret
    return bot


def subscriber(bot, n: int, **overrides):
    user = factories.UserFactory(email=f"sub{n}@example.com")
    account, _ = factories.paper_account(owner=user, label=f"Paper {n}")
    return subscription_create(user=user, bot=bot, account=account, **overrides)


def alert(client, bot, action="buy", **fields) -> str:
    body = {"ticker": "BTCUSDT", "action": action, "secret": bot.raw_secret, "price": 95000, **fields}
    response = client.post(f"/api/v1/bots/webhook/master/{bot.webhook_path}", data=json.dumps(body),
                           content_type="text/plain")
    assert response.status_code == 202, response.content
    return response.json()["signal_id"]


def mixed_crowd(bot):
    """Eight subscribers, each meeting a different gate of the engine."""
    subs = [subscriber(bot, n) for n in range(8)]
    settings_ = subs[1].user.trading_settings
    settings_.auto_trade = False  # rejected: auto_trade_off
    settings_.save()
    BrokerAccount.objects.filter(pk=subs[2].account_id).update(enabled=False)  # rejected: account_disabled
    BillingAccount.objects.filter(user=subs[3].user).update(trial_ends_at="2000-01-01T00:00Z")  # plan_limit
    subs[4].max_concurrent_positions = 0  # rejected by the subscription's own limit
    subs[4].save()
    from risk.services import risk_config_update

    risk_config_update(user=subs[5].user, max_position_value=D("500"))  # 100 × 10 = 1,000 sized: over it
    # Already long from an earlier entry of this bot: the fill is netted into it, not opened beside it.
    Position.objects.create(account=subs[6].account, symbol="BTCUSDT", side="long", qty=D("0.01"),
                            avg_price=D("90000"), last_price=D("90000"), meta={"bot": bot.pk})
    subs[7].margin, subs[7].leverage, subs[7].stop_loss_pct = D("300"), 5, D("1.5")
    subs[7].save()
    return subs


def outcome(subs, signal_id):
    signal = Signal.objects.get(pk=signal_id)
    executions = {e.subscription_id: e for e in Execution.objects.filter(signal_id=signal_id)}
    rows = []
    for sub in subs:
        e = executions[sub.pk]
        position = Position.objects.filter(account=sub.account, status="open").first()
        rows.append((e.status, e.reason_code, e.reason, e.slippage, e.attempts,
                     position and (position.side, position.qty, position.avg_price, position.stop_loss,
                                   position.take_profit, position.meta == {"bot": sub.bot_id}),
                     sorted(Order.objects.filter(execution=e).values_list("leg", "status", "qty", "avg_price"))))
    return rows, (signal.total_subscribers, signal.successful, signal.failed, signal.rejected)


def test_a_batch_ends_every_subscriber_as_the_one_by_one_engine_does(client, settings,
                                                                     django_capture_on_commit_callbacks):
    """The same crowd through both engines: every status, reason, position, order and counter is the same."""
    results = []
    for size in (0, 100):  # 0: one task per subscriber
        settings.BOT_BATCH_SIZE = size
        Execution.objects.all().delete()
        Position.objects.all().delete()
        User.objects.filter(email__startswith="sub").delete()
        bot = paper_bot()
        subs = mixed_crowd(bot)
        with django_capture_on_commit_callbacks(execute=True):
            signal_id = alert(client, bot)
        rows, counters = outcome(subs, signal_id)
        results.append((rows, counters))
    one_by_one, batched = results
    assert batched == one_by_one
    rows, counters = batched
    assert counters == (8, 3, 0, 5)
    assert [(r[0], r[1]) for r in rows] == [
        ("filled", ""), ("rejected", "auto_trade_off"), ("rejected", "account_disabled"), ("rejected", "plan_limit"),
        ("rejected", "max_concurrent_positions"), ("rejected", "max_position_value"), ("filled", ""), ("filled", "")]
    # 100 × 10 ÷ 95000 at the alert's price, with the bot's 2 % / 4 % levels; the netted one averaged in.
    assert rows[0][5] == ("long", D("0.01052631"), D("95000"), D("93100"), D("98800"), True)
    assert rows[6][5][1:3] == (D("0.02052631"), D("92564.10187705"))
    assert rows[7][5][1] == D("0.01578947") and rows[7][5][3] == D("93575")


def test_a_batch_costs_a_fixed_number_of_statements_not_one_set_per_subscriber(client, settings,
                                                                                django_capture_on_commit_callbacks):
    settings.BOT_BATCH_SIZE = 1000
    costs = {}
    for crowd in (5, 40):
        bot = paper_bot()
        for n in range(crowd):
            subscriber(bot, crowd * 100 + n)
        with django_capture_on_commit_callbacks(execute=False):
            signal_id = alert(client, bot)
        ids = bot_signal_fan_out(signal_id=signal_id)
        with CaptureQueriesContext(connection) as queries:
            outcome = executions_run_batch(ids)
        assert (outcome.finished, outcome.single) == (crowd, [])
        costs[crowd] = len(queries)
    # One by one this is about 25 statements per subscriber (875 more for 35 more). A new user's first entry
    # creates their risk settings and billing record: those are per user, and are in both counts.
    assert costs[40] - costs[5] <= 35 * 2, costs
    assert PaperOrder.objects.count() == 45 and Position.objects.filter(status="open").count() == 45


@pytest.fixture
def pending(client, settings, django_capture_on_commit_callbacks):
    """Six paper subscribers with their executions created and not yet run."""
    settings.BOT_BATCH_SIZE = 100
    bot = paper_bot()
    subs = [subscriber(bot, n) for n in range(6)]
    with django_capture_on_commit_callbacks(execute=False):
        signal_id = alert(client, bot)
    return subs, signal_id, bot_signal_fan_out(signal_id=signal_id)


def test_a_redelivered_batch_and_a_one_by_one_run_never_trade_twice(pending):
    subs, signal_id, ids = pending
    execution_run_task.apply(args=(ids[0],))  # one subscriber's own task got there first

    first = executions_run_batch(ids)
    again = executions_run_batch(ids)  # the same message delivered twice

    assert first.finished == 5 and ids[0] in first.single
    assert again.finished == 0 and sorted(again.single) == sorted(ids)
    for pk in again.single:  # the tasks the second delivery hands out find every execution finished
        execution_run_task.apply(args=(pk,))
    assert PaperOrder.objects.count() == 6 and Order.objects.count() == 6
    assert set(Execution.objects.values_list("status", flat=True)) == {"filled"}
    signal = Signal.objects.get(pk=signal_id)
    assert (signal.successful, signal.failed, signal.rejected) == (6, 0, 0)


def test_a_paper_batch_that_fails_after_the_fills_leaves_nothing_half_done_and_hands_over(pending, monkeypatch):
    """On the paper broker a batch is one transaction: a crash after the paper book filled and before the positions
    were booked rolls back the orders, the fills and the trade slots together; the one-by-one path then runs each
    execution from the start, and each trades once."""
    from brokers.services import batch
    from risk.models import RiskAdmission

    subs, signal_id, ids = pending

    def crash(fills):
        raise RuntimeError("database went away")

    monkeypatch.setattr(batch, "positions_apply_fills", crash)
    outcome = executions_run_batch(ids)
    assert outcome.finished == 0 and sorted(outcome.single) == sorted(ids)
    assert set(Execution.objects.values_list("status", flat=True)) == {"pending"}
    assert not Order.objects.exists() and not PaperOrder.objects.exists() and not RiskAdmission.objects.exists()

    for pk in outcome.single:
        execution_run_task.apply(args=(pk,))

    assert PaperOrder.objects.count() == 6 and Order.objects.filter(status="filled").count() == 6
    assert Position.objects.filter(status="open").count() == 6 and RiskAdmission.objects.count() == 6
    assert set(Execution.objects.values_list("status", "attempts")) == {("filled", 2)}
    signal = Signal.objects.get(pk=signal_id)
    assert (signal.successful, signal.failed, signal.rejected) == (6, 0, 0)


@pytest.mark.pg
@pytest.mark.django_db(transaction=True)
def test_two_batches_at_once_on_postgresql_claim_each_subscriber_once(client, settings):
    settings.BOT_BATCH_SIZE = 100
    bot = paper_bot()
    for n in range(30):
        subscriber(bot, n)
    signal_id = alert(client, bot)  # transaction=True: on-commit runs the fan-out... eagerly, so undo it first
    Execution.objects.filter(signal_id=signal_id).delete()
    Order.objects.all().delete()
    PaperOrder.objects.all().delete()
    Position.objects.all().delete()
    Signal.objects.filter(pk=signal_id).update(successful=0, failed=0, rejected=0)
    from risk.models import RiskAdmission

    RiskAdmission.objects.all().delete()
    ids = bot_signal_fan_out(signal_id=signal_id)

    results, errors = run_at_once([lambda: executions_run_batch(ids), lambda: executions_run_batch(ids[::-1])])

    assert errors == []
    assert sum(r.finished for r in results) == 30
    assert PaperOrder.objects.count() == 30 and Order.objects.count() == 30
    signal = Signal.objects.get(pk=signal_id)
    assert signal.successful == 30


# --- Binance ---------------------------------------------------------------------------------------------------


@pytest.fixture
def live_bot(binance, settings):
    settings.LIVE_TRADING_ENABLED = True
    settings.BOT_BATCH_SIZE = 100
    bot, secret = bot_create(name="Batch live", market_type="futures", broker="binance", default_leverage=10,
                             default_margin=D("100"), default_stop_loss_pct=D("2.5"), default_take_profit_pct=D("5"))
    bot.raw_secret = secret
    return bot


def binance_subscriber(bot, server, n: int, key=None):
    user = factories.UserFactory(email=f"live{n}@example.com")
    api_key, api_secret = key or server.add_account()
    account, _ = account_create(owner=user, label=f"Binance {n}", broker="binance", mode="live", currency="USDT",
                                api_key=api_key, api_secret=api_secret, options={"market": "futures"})
    return subscription_create(user=user, bot=bot, account=account)


@pytest.mark.slow
def test_a_binance_batch_places_each_main_order_once_then_its_stops(live_bot, binance, client,
                                                                    django_capture_on_commit_callbacks):
    subs = [binance_subscriber(live_bot, binance, n) for n in range(6)]
    refused = binance_subscriber(live_bot, binance, 6, key=("0" * 64, "unknown-secret"))  # -2015 at its first call
    binance.fault("5xx_accepted", method="POST", path="/fapi/v1/order", times=1)  # taken, answered 503

    with django_capture_on_commit_callbacks(execute=True):
        signal_id = alert(client, live_bot)

    executions = {e.subscription_id: e for e in Execution.objects.filter(signal_id=signal_id)}
    assert [executions[s.pk].status for s in subs] == ["filled"] * 6
    assert (executions[refused.pk].status, executions[refused.pk].reason_code) == ("failed", "-2015")
    # Exactly one accepted main order per subscriber; the one that got a 500 was looked up, not blindly resent
    # into a second order (Binance's duplicate-client-id check would have refused a resend anyway).
    sent = [(r.params["newClientOrderId"], r.status) for r in binance.calls("/fapi/v1/order", "POST")]
    assert sorted(cid for cid, _ in sent) == sorted(Order.objects.filter(leg="main", status="filled")
                                                   .values_list("client_order_id", flat=True))
    assert sorted(status for _, status in sent) == [200] * 5 + [503]
    assert len(binance.calls("/fapi/v1/order", "GET")) == 1  # the lookup of the one in doubt
    stops = [r.params["type"] for r in binance.calls("/fapi/v1/algoOrder", "POST") if r.status == 200]
    assert sorted(stops) == ["STOP_MARKET"] * 6 + ["TAKE_PROFIT_MARKET"] * 6
    for sub in subs:
        position = Position.objects.get(account=sub.account)
        assert (position.qty, position.stop_loss, position.take_profit) == (D("0.01"), D("92853.6"), D("99996.2"))
        assert executions[sub.pk].latency_ms > 0 and executions[sub.pk].slippage == D("234.5")
    signal = Signal.objects.get(pk=signal_id)
    assert (signal.successful, signal.failed, signal.rejected) == (6, 1, 0)
