"""The bot master webhook: ``POST /api/v1/bots/webhook/master/<path>`` through Django's test client."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.cache import cache
from django.utils import timezone

from bots.models import Subscription
from bots.services import bot_create, bot_pause, bot_rotate_secret, subscription_create
from brokers.models import Execution, Order
from tests import factories
from tests.asgi_client import webhook_router_client
from webhooks.models import Signal, WebhookLog

FROZEN = timezone.now().replace(second=5, microsecond=0)
UNAUTHORIZED = {"error": {"code": "unauthorized", "message": (
    "Unknown bot or wrong secret: send the bot's master secret in the \"secret\" field of the alert body, to the "
    "exact webhook URL shown on the bot's page"), "fields": {}}}


@pytest.fixture(params=["django", "asgi"])
def client(request, client):
    """Each test runs twice: through the Django view, and the way uvicorn serves it (webhooks/asgi.py)."""
    return client if request.param == "django" else webhook_router_client()


@pytest.fixture
def bot(db):
    bot, secret = bot_create(name="Scalper BTC", market_type="futures", broker="binance", default_leverage=10,
                             default_margin=Decimal("100"), default_stop_loss_pct=Decimal("2"),
                             symbols="BTCUSDT, ETHUSDT", rate_limit="100/m")
    bot.raw_secret = secret
    return bot


def subscribers(bot, n: int) -> list[Subscription]:
    subs = []
    for i in range(n):
        user = factories.UserFactory()
        account, _ = factories.paper_account(owner=user, label=f"Paper {i}")
        subs.append(subscription_create(user=user, bot=bot, account=account))
    return subs


def url(bot) -> str:
    return f"/api/v1/bots/webhook/master/{bot.webhook_path}"


def alert(bot, **fields) -> dict:
    return {"ticker": "BTCUSDT", "action": "buy", "secret": bot.raw_secret, "price": 95234.5, **fields}


def post(client, bot, body, path: str | None = None):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(path or url(bot), data=data, content_type="text/plain")


def last_log() -> WebhookLog:
    return WebhookLog.objects.order_by("-pk").first()


def test_alert_answers_202_with_the_subscriber_count_and_defers_all_work(client, bot,
                                                                        django_capture_on_commit_callbacks):
    subscribers(bot, 3)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post(client, bot, alert(bot))
    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == {"signal_id", "status", "total_subscribers"} and body["total_subscribers"] == 3
    signal = Signal.objects.get(pk=body["signal_id"])
    assert (signal.bot, signal.account, signal.format, signal.total_subscribers) == (bot, None, "bot", 3)
    assert signal.intent == {"format": "bot", "action": "entry", "side": "buy", "symbol": "BTCUSDT",
                             "price": "95234.5", "market": "futures"}
    assert signal.payload["secret"] == "[redacted]" and signal.source_ip == "127.0.0.1"
    assert not Execution.objects.exists()  # nothing per subscriber in the request
    assert len(callbacks) == 1  # one fan-out task
    log = last_log()
    assert (log.status, log.bot, log.signal, log.account) == (202, bot, signal, None)
    assert bot.raw_secret not in json.dumps([log.payload, log.response, log.path])
    callbacks[0]()
    assert Execution.objects.filter(signal=signal, status="filled").count() == 3


@pytest.mark.parametrize("secret", ["wrong", "", None, 123])
def test_wrong_or_missing_secret_is_401_and_nothing_is_executed(client, bot, secret):
    subscribers(bot, 1)
    body = alert(bot, secret=secret) if secret is not None else {k: v for k, v in alert(bot).items() if k != "secret"}
    response = post(client, bot, body)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED
    assert not Signal.objects.exists() and not Execution.objects.exists()
    log = last_log()
    assert (log.status, log.bot, log.signal) == (401, None, None)


def test_unknown_bot_and_wrong_secret_get_the_identical_401(client, bot):
    unknown = post(client, bot, alert(bot), path="/api/v1/bots/webhook/master/no-such-bot")
    wrong = post(client, bot, alert(bot, secret=bot.raw_secret + "x"))
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.content == wrong.content


def test_wrong_secrets_are_rate_limited_per_address_not_per_bot(client, bot, settings):
    settings.WEBHOOK_UNKNOWN_KEY_RATE_LIMIT = "2/m"
    subscribers(bot, 1)
    with time_machine.travel(FROZEN, tick=False):
        statuses = [post(client, bot, alert(bot, secret=f"guess{n}")).status_code for n in range(3)]
        good = post(client, bot, alert(bot))
    assert statuses == [401, 401, 429]
    assert good.status_code == 202  # a stranger's guesses do not silence the bot


def test_rotated_secret_replaces_the_old_one(client, bot):
    old = bot.raw_secret
    new = bot_rotate_secret(bot=bot)
    assert post(client, bot, alert(bot, secret=old, id=1)).status_code == 401
    assert post(client, bot, alert(bot, secret=new, id=2)).status_code == 202


def test_paused_bot_is_423_and_archived_409_with_nothing_stored(client, bot):
    subscribers(bot, 1)
    bot_pause(bot=bot)
    response = post(client, bot, alert(bot))
    assert response.status_code == 423
    error = response.json()["error"]
    assert error["code"] == "bot_paused" and "Scalper BTC is paused" in error["message"]
    bot.status = "archived"
    bot.save()
    assert post(client, bot, alert(bot, id=2)).status_code == 409
    assert not Signal.objects.exists() and not Execution.objects.exists()
    assert list(WebhookLog.objects.values_list("status", "bot")) == [(409, bot.pk), (423, bot.pk)]


def test_rate_limit_per_bot(client, bot):
    bot.rate_limit = "2/m"
    bot.save()
    other, other_secret = bot_create(name="Other", rate_limit="2/m")
    with time_machine.travel(FROZEN, tick=False):
        responses = [post(client, bot, alert(bot, id=n)) for n in range(3)]
        elsewhere = post(client, other, {**alert(bot), "secret": other_secret}, path=url(other))
    assert [r.status_code for r in responses] == [202, 202, 429]
    error = responses[2].json()["error"]
    assert error["code"] == "rate_limited" and "limit 2/m" in error["message"]
    assert elsewhere.status_code == 202  # the limit is per bot
    assert Signal.objects.filter(bot=bot).count() == 2


@pytest.mark.parametrize("lag, status", [(5, 202), (29, 202), (31, 422)])
def test_max_lag_refuses_stale_alerts(client, bot, lag, status):
    bot.max_lag_seconds = 30
    bot.save()
    sent = timezone.now() - timedelta(seconds=lag)
    response = post(client, bot, alert(bot, timestamp=sent.isoformat().replace("+00:00", "Z")))
    assert response.status_code == status, response.content
    if status == 422:
        error = response.json()["error"]
        assert error["code"] == "stale_alert" and "Stale alert" in error["message"] and "30 s" in error["message"]
        assert not Signal.objects.exists()


def test_max_lag_accepts_unix_times_and_needs_a_timestamp(client, bot):
    bot.max_lag_seconds = 30
    bot.save()
    assert post(client, bot, alert(bot, timestamp=int(timezone.now().timestamp() * 1000))).status_code == 202
    missing = post(client, bot, alert(bot, id="no-ts"))
    assert missing.status_code == 422 and "timestamp" in missing.json()["error"]["fields"]
    garbage = post(client, bot, alert(bot, id="bad-ts", timestamp="yesterday"))
    assert garbage.status_code == 422


def test_symbol_allow_list(client, bot):
    refused = post(client, bot, alert(bot, ticker="DOGEUSDT"))
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "symbol_not_allowed" and "BTCUSDT, ETHUSDT" in error["message"]
    # TradingView's exchange prefix and perpetual suffix are not part of the symbol.
    assert post(client, bot, alert(bot, ticker="BINANCE:ethusdt.P")).status_code == 202
    assert Signal.objects.get().intent["symbol"] == "ETHUSDT"


@pytest.mark.parametrize("body, field", [
    ('{"ticker": "BTCUSDT", "secret": "%s"}', "action"),
    ('{"ticker": "BTCUSDT", "action": "hold", "secret": "%s"}', "action"),
    ('{"action": "buy", "secret": "%s"}', "ticker"),
    ('{"ticker": "BTCUSDT", "action": "buy", "price": "abc", "secret": "%s"}', "price"),
    ('{"ticker": "BTCUSDT", "action": "buy", "price": -1, "secret": "%s"}', "price"),
])
def test_invalid_fields_are_named(client, bot, body, field):
    response = post(client, bot, body % bot.raw_secret)
    assert response.status_code == 422, response.content
    assert list(response.json()["error"]["fields"]) == [field]
    assert not Signal.objects.exists()


def test_malformed_json_and_oversize(client, bot):
    assert post(client, bot, '{"ticker": ').status_code == 400
    assert post(client, bot, json.dumps({**alert(bot), "pad": "x" * 70000})).status_code == 413
    assert client.get(url(bot)).status_code == 405


# --- duplicates ------------------------------------------------------------------------------------------------


def test_tradingview_resending_four_times_is_one_execution_per_subscriber(client, bot,
                                                                          django_capture_on_commit_callbacks):
    subscribers(bot, 2)
    with django_capture_on_commit_callbacks(execute=True):
        responses = [post(client, bot, alert(bot)) for _ in range(4)]
    assert [r.status_code for r in responses] == [202, 200, 200, 200]
    assert {r.json()["signal_id"] for r in responses} == {responses[0].json()["signal_id"]}
    assert Signal.objects.count() == 1
    assert Execution.objects.count() == 2 and Order.objects.count() == 2


def test_explicit_id_is_remembered_by_the_database_after_the_cache_forgets(client, bot,
                                                                          django_capture_on_commit_callbacks):
    subscribers(bot, 1)
    with django_capture_on_commit_callbacks(execute=True):
        first = post(client, bot, alert(bot, id="tv-1"))
        cache.clear()
        second = post(client, bot, alert(bot, id="tv-1", price=1))
    assert second.status_code == 200 and second.json()["signal_id"] == first.json()["signal_id"]
    assert Signal.objects.count() == 1 and Execution.objects.count() == 1


def test_same_id_on_another_bot_or_an_account_is_not_a_duplicate(client, bot, owner):
    other, other_secret = bot_create(name="Other")
    account, key = factories.paper_account(owner=owner)
    assert post(client, bot, alert(bot, id="x")).status_code == 202
    assert post(client, other, {**alert(bot, id="x"), "secret": other_secret}, path=url(other)).status_code == 202
    unify = {"version": "unify.v1", "id": "x", "intent": {"side": "buy", "symbol": "BTCUSDT", "qty": 1,
                                                         "price": 9}}
    assert client.post(f"/api/v1/webhooks/{key}", data=json.dumps(unify), content_type="text/plain").status_code == 202
    assert Signal.objects.count() == 3


def test_same_body_after_the_dedupe_window_is_a_new_signal(client, bot, settings):
    with time_machine.travel(FROZEN, tick=False) as clock:
        first = post(client, bot, alert(bot))
        clock.shift(timedelta(seconds=settings.WEBHOOK_DEDUPE_SECONDS + 1))
        again = post(client, bot, alert(bot))
    assert (first.status_code, again.status_code) == (202, 202)


# --- the hot path's cost ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 25])
def test_master_webhook_query_count_does_not_grow_with_subscribers(client, bot, n, django_assert_num_queries,
                                                                   django_capture_on_commit_callbacks):
    subscribers(bot, n)
    # bot lookup, SAVEPOINT, COUNT of subscribers, INSERT signal, INSERT log, RELEASE
    with django_capture_on_commit_callbacks(execute=False), django_assert_num_queries(6):
        assert post(client, bot, alert(bot, id=f"q{n}")).status_code == 202
