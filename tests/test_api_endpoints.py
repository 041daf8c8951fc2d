"""What a customer's program sees through the API: accounts and keys, positions, orders, signals, subscriptions,
operator endpoints, the shared error format, pagination and per-token throttling."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import AuditLog
from accounts.tokens import api_token_create
from bots.models import Bot, Subscription
from bots.services import bot_create, bot_pause
from brokers.adapters.paper import quote_set
from brokers.models import BrokerAccount, Execution, Order, Position
from brokers.services import api_key_authenticate
from risk.selectors import trading_halted
from tests import factories
from webhooks.models import Signal

pytestmark = pytest.mark.django_db

BINANCE_KEY, BINANCE_SECRET = "bnKEY" + "a" * 59, "bnSECRET" + "b" * 56
KITE_KEY, KITE_SECRET, KITE_TOKEN = "kiteKEY123", "kiteSECRET456", "kiteACCESS789"
PROXY = "http://user:proxypass@203.0.113.7:3128"


@pytest.fixture
def api(client, owner):
    token = api_token_create(owner=owner, name="tests").raw

    def call(method: str, url: str, body=None, token_=None, **extra):
        headers = {"HTTP_AUTHORIZATION": f"Token {token_ or token}", **extra}
        if method == "get":
            return client.get(url, body or {}, **headers)
        return getattr(client, method)(url, body or {}, content_type="application/json", **headers)

    call.token = token
    return call


def test_broker_credentials_are_never_returned(api, owner):
    binance = factories.binance_account(owner=owner, api_key=BINANCE_KEY, api_secret=BINANCE_SECRET, proxy=PROXY)
    kite = factories.kite_account(owner=owner, api_key=KITE_KEY, api_secret=KITE_SECRET, access_token=KITE_TOKEN,
                                  options={"proxy": PROXY})
    bodies = [api("get", "/api/v1/accounts/").content]
    for account in (binance, kite):
        bodies += [api("get", f"/api/v1/accounts/{account.pk}/").content,
                   api("post", f"/api/v1/accounts/{account.pk}/disable/").content,
                   api("post", f"/api/v1/accounts/{account.pk}/enable/").content,
                   api("post", f"/api/v1/accounts/{account.pk}/regenerate-key/").content]
    for body in bodies:
        text = body.decode()
        for secret in (BINANCE_KEY, BINANCE_SECRET, KITE_KEY, KITE_SECRET, KITE_TOKEN, "proxypass"):
            assert secret not in text
    detail = api("get", f"/api/v1/accounts/{binance.pk}/").json()
    assert detail["has_credentials"] is True and detail["options"] == {"market": "futures"}
    assert "api_key" not in detail and "api_secret" not in detail and "access_token" not in detail


def test_create_paper_account_shows_the_webhook_key_once(api, client, owner):
    response = api("post", "/api/v1/accounts/", {"label": "Script paper", "paper_capital": "5000", "currency": "USD"})
    assert response.status_code == 201
    body = response.json()
    raw = body["webhook_key"]
    assert body["webhook_url"].endswith(f"/api/v1/webhooks/{raw}")
    account = BrokerAccount.objects.get(pk=body["account"]["id"], owner=owner)
    assert account.paper_capital == Decimal("5000") and account.balance == Decimal("5000")
    assert api_key_authenticate(raw).pk == account.pk
    assert raw not in api("get", f"/api/v1/accounts/{account.pk}/").content.decode()
    assert body["account"]["webhook_key_prefix"].startswith(raw[:9])
    alert = client.post(f"/api/v1/webhooks/{raw}", {"version": "unify.v1", "intent": {
        "side": "buy", "type": "market", "symbol": "BTCUSDT", "qty": 1, "price": 100}}, content_type="application/json")
    assert alert.status_code == 202


def test_regenerate_key_invalidates_the_old_one(api, paper):
    account, old = paper
    response = api("post", f"/api/v1/accounts/{account.pk}/regenerate-key/")
    assert response.status_code == 200
    new = response.json()["webhook_key"]
    assert new != old and api_key_authenticate(old) is None and api_key_authenticate(new).pk == account.pk


def test_disable_and_enable(api, paper):
    account, _ = paper
    assert api("post", f"/api/v1/accounts/{account.pk}/disable/").json()["enabled"] is False
    account.refresh_from_db()
    assert not account.enabled
    assert api("post", f"/api/v1/accounts/{account.pk}/enable/").json()["enabled"] is True


def test_invalid_paper_account_names_the_fields(api):
    response = api("post", "/api/v1/accounts/", {"paper_capital": "-5", "currency": "EUR"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_fields"
    assert set(error["fields"]) == {"label", "paper_capital", "currency"}
    assert "label" in error["message"]


def test_close_position_then_conflict(api, paper, django_capture_on_commit_callbacks):
    account, _ = paper
    quote_set(broker="paper", symbol="BTCUSDT", price=Decimal("110"))
    position = Position.objects.create(account=account, symbol="BTCUSDT", side="long", qty=Decimal("2"),
                                       avg_price=Decimal("100"))
    listed = api("get", "/api/v1/positions/", {"status": "open"}).json()["results"]
    assert [p["id"] for p in listed] == [position.pk]
    with django_capture_on_commit_callbacks(execute=True):  # the close task is enqueued on commit
        response = api("post", f"/api/v1/positions/{position.pk}/close/")
    assert response.status_code == 202
    assert Execution.objects.get(pk=response.json()["execution_id"]).kind == Execution.Kind.CLOSE
    position.refresh_from_db()
    assert position.status == Position.Status.CLOSED and position.realized_pnl == Decimal("20")
    again = api("post", f"/api/v1/positions/{position.pk}/close/")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_closed"


def _order(account, n: int, **fields) -> Order:
    return Order.objects.create(account=account, leg="main", client_order_id=f"TF-{account.pk}-{n}", side="buy",
                                qty=Decimal("1"), **fields)


def test_order_filters(api, owner, paper):
    account, _ = paper
    second, _ = factories.paper_account(owner=owner, label="Second")
    btc = _order(account, 1, symbol="BTCUSDT", status=Order.Status.FILLED)
    eth = _order(account, 2, symbol="ETHUSDT", status=Order.Status.REJECTED)
    old = _order(second, 3, symbol="BTCUSDT", status=Order.Status.FILLED)
    Order.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))

    def ids(**params):
        response = api("get", "/api/v1/orders/", params)
        assert response.status_code == 200, response.content
        return {o["id"] for o in response.json()["results"]}

    assert ids() == {btc.pk, eth.pk, old.pk}
    assert ids(account=account.pk) == {btc.pk, eth.pk}
    assert ids(symbol="btcusdt") == {btc.pk, old.pk}
    assert ids(status="rejected") == {eth.pk}
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids(created_after=since) == {btc.pk, eth.pk}
    assert ids(created_before=since) == {old.pk}
    bad = api("get", "/api/v1/orders/", {"status": "nope", "created_after": "yesterday"})
    assert bad.status_code == 400 and set(bad.json()["error"]["fields"]) == {"status", "created_after"}



def _integer_filters() -> list[tuple[str, str]]:
    """(list URL, query parameter) for every integer filter of every API list endpoint, found from the routes."""
    from django.urls import reverse

    from tradeflow import api_urls
    from tradeflow.api_common import IntegerFilter

    found = []
    for route in api_urls.urlpatterns:
        filterset = getattr(getattr(route.callback, "view_class", None), "filterset_class", None)
        for name, filter_ in (filterset.base_filters.items() if filterset else ()):
            if isinstance(filter_, IntegerFilter):
                found.append((reverse(route.name), name))
    return found


def test_api_filtersets_use_the_bounded_integer_filter():
    """A bare NumberFilter takes any decimal and lets SQLite overflow (a 500): every number filter is IntegerFilter."""
    import django_filters

    from tradeflow import api_urls
    from tradeflow.api_common import IntegerFilter

    bare = [f"{route.name}.{name}" for route in api_urls.urlpatterns
            for name, filter_ in getattr(getattr(getattr(route.callback, "view_class", None), "filterset_class", None),
                                         "base_filters", {}).items()
            if isinstance(filter_, django_filters.NumberFilter) and not isinstance(filter_, IntegerFilter)]
    assert bare == []
    assert {url for url, name in _integer_filters() if name == "account"} == {
        "/api/v1/positions/", "/api/v1/orders/", "/api/v1/executions/", "/api/v1/signals/", "/api/v1/webhook-log/"}


@pytest.mark.parametrize("value", ["9223372036854775808", "9.223372036854776e+18", "-9223372036854775809", "1.5",
                                   "99999999999999999999999"])
def test_integer_filters_out_of_range_are_a_400_naming_the_field(api, paper, value):
    """Found by schemathesis: ?account=9.223372036854776e+18 was an OverflowError (500) on SQLite."""
    filters = _integer_filters()
    assert ("/api/v1/orders/", "account") in filters and ("/api/v1/webhook-log/", "status") in filters
    for url, name in filters:
        response = api("get", url, {name: value})
        assert response.status_code == 400, (url, name, response.content)
        error = response.json()["error"]
        assert error["code"] == "invalid_fields" and set(error["fields"]) == {name}, (url, error)
        assert f"{name}:" in error["message"]


def test_integer_filters_take_any_value_their_column_holds(api, paper):
    account, _ = paper
    _order(account, 1, symbol="BTCUSDT", status=Order.Status.FILLED)
    for url, name in _integer_filters():
        for value in ("9223372036854775807", "-9223372036854775808", "0") if name == "account" else ("32767", "0"):
            response = api("get", url, {name: value})
            assert response.status_code == 200 and response.json()["results"] == [], (url, name, value)
    assert api("get", "/api/v1/orders/", {"account": str(account.pk)}).json()["count"] == 1
    assert api("get", "/api/v1/webhook-log/", {"status": "32768"}).status_code == 400  # a smallint column


@pytest.mark.parametrize("path", ["accounts/{}/", "accounts/{}/enable/", "positions/{}/", "positions/{}/close/",
                                  "executions/{}/", "webhook-log/{}/", "orders/{}/", "subscriptions/{}/",
                                  "subscriptions/{}/pause/"])
def test_ids_past_64_bits_in_the_path_are_a_404(api, paper, path):
    for pk in ("9223372036854775808", "99999999999999999999999999"):
        method = "get" if path.count("/") == 2 else "post"
        response = api(method, "/api/v1/" + path.format(pk))
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", (path, response)

def test_executions_and_signals_carry_rejection_reasons(api, paper):
    account, _ = paper
    signal = Signal.objects.create(account=account, format=Signal.Format.UNIFY, body_hash="h", payload={"x": 1},
                                   intent={"action": "entry"}, received_at=timezone.now())
    execution = Execution.objects.create(signal=signal, account=account, status=Execution.Status.REJECTED,
                                         reason_code="max_open_positions", reason="3 positions open, your limit")
    rows = api("get", "/api/v1/executions/", {"status": "rejected"}).json()["results"]
    assert [(r["id"], r["reason_code"], r["reason"]) for r in rows] == [
        (execution.pk, "max_open_positions", "3 positions open, your limit")]
    detail = api("get", f"/api/v1/signals/{signal.pk}/").json()
    assert detail["executions"][0]["reason"] == "3 positions open, your limit"


def test_subscription_lifecycle_with_overrides(api, owner, paper):
    account, _ = paper
    bot, _ = bot_create(name="Trend", broker="binance", market_type="futures")
    response = api("post", "/api/v1/subscriptions/", {"bot": bot.pk, "account": account.pk, "leverage": 3,
                                                      "stop_loss_pct": "0", "max_daily_loss": "250"})
    assert response.status_code == 201, response.content
    sub = Subscription.objects.get(pk=response.json()["id"], user=owner)
    assert (sub.leverage, sub.stop_loss_pct, sub.max_daily_loss, sub.margin) == (3, Decimal("0"), Decimal("250"), None)
    twice = api("post", "/api/v1/subscriptions/", {"bot": bot.pk, "account": account.pk})
    assert twice.status_code == 400 and "already subscribed" in twice.json()["error"]["fields"]["account"]
    assert api("post", f"/api/v1/subscriptions/{sub.pk}/pause/").json()["status"] == "paused"
    assert api("post", f"/api/v1/subscriptions/{sub.pk}/resume/").json()["status"] == "active"
    closing = api("post", f"/api/v1/subscriptions/{sub.pk}/unsubscribe/", {"close_only": True})
    assert closing.json()["status"] == "close_only"
    ended = api("post", f"/api/v1/subscriptions/{sub.pk}/unsubscribe/", {"close_only": False})
    assert ended.json()["status"] == "unsubscribed"
    assert api("get", "/api/v1/subscriptions/").json()["count"] == 0
    assert api("get", f"/api/v1/subscriptions/{sub.pk}/").status_code == 404


def test_paused_bot_takes_no_subscribers(api, paper):
    account, _ = paper
    bot, _ = bot_create(name="Paused", broker="binance", market_type="futures")
    bot_pause(bot=bot)
    response = api("post", "/api/v1/subscriptions/", {"bot": bot.pk, "account": account.pk})
    assert response.status_code == 400 and "paused" in response.json()["error"]["fields"]["bot"]


def test_operator_bot_endpoints_show_the_secret_once(client, admin_user):
    token = api_token_create(owner=admin_user, name="ops").raw
    headers = {"HTTP_AUTHORIZATION": f"Token {token}"}
    created = client.post("/api/v1/bots/", {"name": "Scalper", "broker": "binance", "market_type": "futures",
                                            "symbols": "btcusdt, ethusdt"}, content_type="application/json", **headers)
    assert created.status_code == 201, created.content
    bot = Bot.objects.get(pk=created.json()["bot"]["id"])
    assert created.json()["secret"] == bot.secret and bot.webhook_path in created.json()["webhook_url"]
    assert bot.secret not in client.get(f"/api/v1/bots/{bot.pk}/", **headers).content.decode()
    rotated = client.post(f"/api/v1/bots/{bot.pk}/rotate-secret/", **headers).json()["secret"]
    bot.refresh_from_db()
    assert rotated == bot.secret and rotated != created.json()["secret"]
    assert client.post(f"/api/v1/bots/{bot.pk}/pause/", **headers).json()["status"] == "paused"
    wrong = client.post("/api/v1/bots/", {"name": "Bad", "broker": "kite", "market_type": "futures"},
                        content_type="application/json", **headers)
    assert wrong.status_code == 400 and "market_type" in wrong.json()["error"]["fields"]


def test_kill_switch_is_for_operators(client, owner, admin_user):
    customer = {"HTTP_AUTHORIZATION": f"Token {api_token_create(owner=owner, name='c').raw}"}
    staff = {"HTTP_AUTHORIZATION": f"Token {api_token_create(owner=admin_user, name='s').raw}"}
    denied = client.post("/api/v1/kill-switch/", {"halted": True}, content_type="application/json", **customer)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "staff_only"
    assert not trading_halted()
    assert client.get("/api/v1/kill-switch/", **staff).json()["halted"] is False
    on = client.post("/api/v1/kill-switch/", {"halted": True, "reason": "exchange outage"},
                     content_type="application/json", **staff)
    assert on.status_code == 201 and trading_halted()
    assert client.get("/api/v1/kill-switch/", **staff).json()["actor"] == admin_user.email


def test_emergency_stop_disables_accounts_and_closes(api, paper):
    account, _ = paper
    quote_set(broker="paper", symbol="ETHUSDT", price=Decimal("90"))
    Position.objects.create(account=account, symbol="ETHUSDT", side="long", qty=Decimal("1"), avg_price=Decimal("100"))
    result = api("post", "/api/v1/emergency-stop/").json()
    assert result == {"positions_closed": 1, "total_pnl": "-10.00000000", "errors": []}
    account.refresh_from_db()
    assert not account.enabled


def test_risk_config_and_trading_settings_update(api, owner):
    response = api("patch", "/api/v1/risk/config/", {"max_open_positions": 2, "trading_days": "0, 1,2",
                                                     "trading_hours_start": "10:00"})
    assert response.status_code == 200, response.content
    assert response.json()["trading_days"] == "0,1,2" and response.json()["trading_hours_start"] == "10:00:00"
    assert owner.risk_config.max_open_positions == 2
    bad = api("patch", "/api/v1/risk/config/", {"trading_days": "mon"})
    assert bad.status_code == 400 and "weekday numbers" in bad.json()["error"]["fields"]["trading_days"]
    assert api("patch", "/api/v1/settings/trading/", {"auto_trade": False}).json()["auto_trade"] is False
    owner.trading_settings.refresh_from_db()
    assert owner.trading_settings.auto_trade is False
    assert AuditLog.objects.get(user=owner, action="trading_settings.updated").details == {
        "auto_trade": {"from": "True", "to": "False"}}


def test_errors_share_the_webhook_format(api, client):
    auth = {"HTTP_AUTHORIZATION": f"Token {api.token}"}
    unknown = client.get("/api/v1/no-such-thing/", **auth)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    form = client.post("/api/v1/accounts/", "label=x", content_type="application/x-www-form-urlencoded", **auth)
    assert form.status_code == 415 and form.json()["error"]["code"] == "unsupported_media_type"
    broken = client.post("/api/v1/accounts/", '{"label": ', content_type="application/json", **auth)
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "malformed_json"
    wrong_method = client.delete("/api/v1/accounts/", **auth)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    for response in (unknown, form, broken, wrong_method):
        assert set(response.json()["error"]) == {"code", "message", "fields"}


def test_pagination(api, owner):
    for n in range(3):
        factories.paper_account(owner=owner, label=f"P{n}")
    page = api("get", "/api/v1/accounts/", {"page_size": 2}).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert len(api("get", "/api/v1/accounts/", {"page_size": 2, "page": 2}).json()["results"]) == 1


def test_throttling_is_per_token(client, owner, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"api": "3/m"}}
    first, second = (api_token_create(owner=owner, name=n).raw for n in ("a", "b"))
    codes = [client.get("/api/v1/positions/", HTTP_AUTHORIZATION=f"Token {first}").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = client.get("/api/v1/positions/", HTTP_AUTHORIZATION=f"Token {first}")
    assert limited.json()["error"]["code"] == "rate_limited" and "retry in" in limited.json()["error"]["message"]
    assert client.get("/api/v1/positions/", HTTP_AUTHORIZATION=f"Token {second}").status_code == 200


def test_replace_broker_credentials_is_write_only(api, owner, paper):
    kite = factories.kite_account(owner=owner, api_key=KITE_KEY, api_secret=KITE_SECRET, access_token=KITE_TOKEN)
    response = api("put", f"/api/v1/accounts/{kite.pk}/credentials/", {"api_key": "newKiteKey1",
                                                                      "api_secret": "newKiteSecret2"})
    assert response.status_code == 200, response.content
    text = response.content.decode()
    assert "newKiteKey1" not in text and "newKiteSecret2" not in text and KITE_TOKEN not in text
    kite.refresh_from_db()
    assert (kite.api_key, kite.api_secret, kite.access_token) == ("newKiteKey1", "newKiteSecret2", "")
    assert response.json()["account"]["status"] == "login_needed"  # a new key means a new Kite login
    paper_account, _ = paper
    refused = api("put", f"/api/v1/accounts/{paper_account.pk}/credentials/", {"api_key": "k", "api_secret": "s"})
    assert refused.status_code == 422 and "Paper accounts" in refused.json()["error"]["message"]
    assert refused.json()["error"]["code"] == "broker_refused"
    spaced = api("put", f"/api/v1/accounts/{kite.pk}/credentials/", {"api_key": "a b", "api_secret": "s"})
    assert spaced.status_code == 400 and "without spaces" in spaced.json()["error"]["fields"]["api_key"]
