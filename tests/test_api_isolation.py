"""Tenant isolation of the customer API, walked over EVERY route under ``/api/v1/``.

The walker asks Django's URL resolver for every pattern under ``api/v1/`` (except the schema/docs pages and the
two webhook receivers, which are not DRF and authenticate with webhook keys) and looks each one up in ``ROUTES``
below. A route that is not in ``ROUTES`` FAILS the suite, with a message saying to add it: a new endpoint cannot
ship without saying how it is isolated. A row in ``ROUTES`` whose route no longer exists fails too.

Adding an endpoint (for example ``GET /api/v1/billing/``): add one row to ``ROUTES`` keyed by the route as the
resolver spells it (``"billing/"``, ``"accounts/<int:pk>/"``), mapping each HTTP method to a ``Check``:

* ``Check(OBJECT, "account")``: an object of the caller's. The fixture ``world`` (below) makes one for the owner
  and one for another customer, under the name given (add yours to ``World.objects`` if it is a new kind). The
  other customer must get 404, an anonymous caller 401.
* ``Check(LIST, "account")``: a list; the owner sees their row and never the other customer's (by id).
* ``Check(MINE)``: a per-user singleton or action (risk config, emergency stop, billing status): anonymous gets
  401, each customer gets their own answer (``mine`` says which field proves it, or a function that checks).
* ``Check(STAFF)``: operators only: anonymous 401, a customer 403, staff not 401/403.
* ``Check(SHARED, "bot")``: visible to every customer (bots): anonymous 401, a customer 200.

``body`` is sent with write methods (JSON); ``{pk}`` in it is replaced by the object's id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.tokens import api_token_create
from bots.services import bot_create, subscription_create
from brokers.adapters.paper import quote_set
from brokers.models import Execution, Order, Position
from risk.selectors import risk_config_get
from tests import factories
from webhooks.models import Signal, WebhookLog

pytestmark = pytest.mark.django_db

PREFIX = "api/v1/"
NOT_WALKED = {"schema/", "docs/", "docs/redoc/"}  # public schema and docs pages (asserted public below)
WEBHOOK_RECEIVERS = {"account-webhook", "account-webhook-key", "bot-master-webhook"}  # plain Django, webhook keys

OBJECT, LIST, MINE, STAFF, SHARED = "object", "list", "mine", "staff", "shared"


@dataclass(frozen=True)
class Check:
    kind: str
    obj: str = ""  # the name of the object in ``World.objects`` (OBJECT, LIST, SHARED)
    body: dict | None = None
    mine: str = ""  # MINE: a field of the answer that differs between the two customers


ROUTES: dict[str, dict[str, Check]] = {
    "accounts/": {"GET": Check(LIST, "account"), "POST": Check(MINE, body={"label": "Walker paper"},
                                                                      mine="account.id")},
    "accounts/<int:pk>/": {"GET": Check(OBJECT, "account")},
    "accounts/<int:pk>/enable/": {"POST": Check(OBJECT, "account")},
    "accounts/<int:pk>/disable/": {"POST": Check(OBJECT, "account")},
    "accounts/<int:pk>/regenerate-key/": {"POST": Check(OBJECT, "account")},
    "accounts/<int:pk>/credentials/": {"PUT": Check(OBJECT, "kite_account",
                                                    body={"api_key": "newkitekey", "api_secret": "newkitesecret"})},
    "accounts/<int:pk>/kite-login/": {"POST": Check(OBJECT, "kite_account")},
    "positions/": {"GET": Check(LIST, "position")},
    "positions/<int:pk>/": {"GET": Check(OBJECT, "position")},
    "positions/<int:pk>/close/": {"POST": Check(OBJECT, "position")},
    "orders/": {"GET": Check(LIST, "order")},
    "executions/": {"GET": Check(LIST, "execution")},
    "executions/<int:pk>/": {"GET": Check(OBJECT, "execution")},
    "signals/": {"GET": Check(LIST, "signal")},
    "signals/<uuid:pk>/": {"GET": Check(OBJECT, "signal")},
    "webhook-log/": {"GET": Check(LIST, "webhook_log")},
    "webhook-log/<int:pk>/": {"GET": Check(OBJECT, "webhook_log")},
    "settings/trading/": {"GET": Check(MINE, mine="default_lots"),
                          "PUT": Check(MINE, body={"default_lots": 9}, mine="hedge_strike_offset"),
                          "PATCH": Check(MINE, body={"hedge_pct": "12.00"}, mine="default_lots")},
    "risk/config/": {"GET": Check(MINE, mine="max_open_positions"),
                     "PUT": Check(MINE, body={"max_trades_per_day": 7}, mine="max_open_positions"),
                     "PATCH": Check(MINE, body={"max_trades_per_day": 8}, mine="max_open_positions")},
    "emergency-stop/": {"POST": Check(MINE, mine="positions_closed")},
    "square-off-all/": {"POST": Check(MINE, mine="positions_closed")},
    "kill-switch/": {"GET": Check(STAFF), "POST": Check(STAFF, body={"halted": False, "reason": "walker"})},
    "bots/": {"GET": Check(SHARED, "bot"), "POST": Check(STAFF, body={"name": "Walker bot"})},
    "bots/<int:pk>/": {"GET": Check(SHARED, "bot")},
    "bots/<int:pk>/pause/": {"POST": Check(STAFF, "bot")},
    "bots/<int:pk>/resume/": {"POST": Check(STAFF, "bot")},
    "bots/<int:pk>/rotate-secret/": {"POST": Check(STAFF, "bot")},
    "billing/": {"GET": Check(MINE, mine="trades_used")},  # billing/api.py: the owner has one filled trade
    "subscriptions/": {"GET": Check(LIST, "subscription"),
                       "POST": Check(MINE, body={"bot": "{bot}", "account": "{spare_account}"}, mine="account")},
    "subscriptions/<int:pk>/": {"GET": Check(OBJECT, "subscription")},
    "subscriptions/<int:pk>/pause/": {"POST": Check(OBJECT, "subscription")},
    "subscriptions/<int:pk>/resume/": {"POST": Check(OBJECT, "subscription")},
    "subscriptions/<int:pk>/unsubscribe/": {"POST": Check(OBJECT, "subscription", body={"close_only": True})},
}


def api_routes() -> dict[str, list[str]]:
    """Every DRF route under /api/v1/ as the resolver spells it, with the HTTP methods its view answers."""
    found: dict[str, list[str]] = {}

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith(PREFIX):
                if pattern.name in WEBHOOK_RECEIVERS:
                    continue
                view = getattr(pattern.callback, "cls", None)
                assert view is not None, f"/{route} is not a DRF view: the customer API is DRF only"
                methods = [m.upper() for m in view.http_method_names if hasattr(view, m) and m not in (
                    "options", "head")]
                found[route.removeprefix(PREFIX)] = methods

    walk(get_resolver().url_patterns, "")
    return {route: methods for route, methods in found.items() if route not in NOT_WALKED}


def test_every_api_route_is_in_the_isolation_table():
    routes = api_routes()
    missing = [f"{m} /api/v1/{r}" for r, methods in routes.items() for m in methods if m not in ROUTES.get(r, {})]
    assert not missing, ("These API endpoints have no tenant-isolation row: add them to ROUTES in "
                         f"tests/test_api_isolation.py (see its docstring): {missing}")
    stale = [f"{m} /api/v1/{r}" for r, checks in ROUTES.items() for m in checks if m not in routes.get(r, [])]
    assert not stale, f"ROUTES names endpoints that no longer exist; remove them: {stale}"
    assert len(routes) >= 30  # the walker really found the API (a broken walk would find nothing)


@dataclass
class World:
    """Two customers with one of everything each, and an operator."""

    owner: object
    other: object
    staff: object
    tokens: dict = field(default_factory=dict)
    objects: dict = field(default_factory=dict)  # name -> {"owner": obj, "other": obj}


def _everything(user, bot, label: str) -> dict:
    account, _ = factories.paper_account(owner=user, label=label)
    signal = Signal.objects.create(account=account, format=Signal.Format.UNIFY, body_hash=label, payload={},
                                   intent={"action": "entry"}, received_at=account.created_at)
    # The owner's trade filled (billing counts it), the other customer's was rejected with a reason.
    status = Execution.Status.FILLED if label == "owner" else Execution.Status.REJECTED
    execution = Execution.objects.create(signal=signal, account=account, status=status, intent={"action": "entry"},
                                         reason_code="" if label == "owner" else "max_open_positions",
                                         reason="" if label == "owner" else "limit")
    order = Order.objects.create(execution=execution, account=account, leg="main", client_order_id=f"TF-{label}",
                                 symbol="BTCUSDT", side="buy", qty=Decimal("1"), status=Order.Status.FILLED)
    position = Position.objects.create(account=account, symbol="BTCUSDT", side="long", qty=Decimal("1"),
                                       avg_price=Decimal("100"), last_price=Decimal("100"))
    log = WebhookLog.objects.create(account=account, signal=signal, method="POST", path="/api/v1/webhooks",
                                    status=202, latency_ms=Decimal("1"))
    subscription = subscription_create(user=user, bot=bot, account=account)
    risk = risk_config_get(user=user)
    risk.max_open_positions = 3 if label == "owner" else 30
    risk.save()
    user.trading_settings.default_lots = 2 if label == "owner" else 20
    user.trading_settings.hedge_strike_offset = 100 if label == "owner" else 300
    user.trading_settings.save()
    spare, _ = factories.paper_account(owner=user, label=f"{label} spare")  # not subscribed to anything yet
    kite = factories.kite_account(owner=user, label=f"{label} kite", mode="paper")
    return {"account": account, "spare_account": spare, "kite_account": kite, "signal": signal,
            "execution": execution, "order": order, "position": position, "webhook_log": log,
            "subscription": subscription, "bot": bot}


@pytest.fixture
def world(owner, other, admin_user):
    quote_set(broker="paper", symbol="BTCUSDT", price=Decimal("101"))  # closes fill at it
    bot, _ = bot_create(name="Walker", broker="binance", market_type="futures")
    w = World(owner=owner, other=other, staff=admin_user)
    mine, theirs = _everything(owner, bot, "owner"), _everything(other, bot, "other")
    w.objects = {name: {"owner": mine[name], "other": theirs[name]} for name in mine}
    for who in ("owner", "other", "staff"):
        w.tokens[who] = api_token_create(owner=getattr(w, who), name="walker").raw
    return w


def _url(route: str, pk) -> str:
    for converter in ("<int:pk>", "<uuid:pk>"):
        route = route.replace(converter, str(pk))
    return f"/api/v1/{route}"


def _call(client, method: str, url: str, token: str | None, body: dict | None):
    headers = {"HTTP_AUTHORIZATION": f"Token {token}"} if token else {}
    if method == "GET":
        return client.get(url, **headers)
    return getattr(client, method.lower())(url, body or {}, content_type="application/json", **headers)


def _fill(body: dict | None, objects: dict) -> dict | None:
    if body is None:
        return None
    return {k: (objects[v[1:-1]].pk if isinstance(v, str) and v.startswith("{") else v) for k, v in body.items()}


def _dig(data: dict, path: str):
    for part in path.split("."):
        data = data[part]
    return data


def _cases():
    return [(route, method) for route, checks in ROUTES.items() for method in checks]


def _assert_error(response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert set(response.json()["error"]) == {"code", "message", "fields"}


@pytest.mark.parametrize("route,method", _cases())
def test_anonymous_caller_gets_401(client, world, route, method):
    check = ROUTES[route][method]
    pk = world.objects[check.obj]["owner"].pk if check.obj else 1
    mine = {name: objs["owner"] for name, objs in world.objects.items()}
    _assert_error(_call(client, method, _url(route, pk), None, _fill(check.body, mine)), 401)


@pytest.mark.parametrize("route,method", _cases())
def test_other_customer_is_isolated(client, world, route, method):
    """The other customer: 404 on the owner's objects, never the owner's rows in a list, their own singleton,
    403 on operator endpoints. Then the owner (or staff) succeeds, so the 404 was not a broken endpoint."""
    check = ROUTES[route][method]
    owner_objs = {name: objs["owner"] for name, objs in world.objects.items()}
    other_objs = {name: objs["other"] for name, objs in world.objects.items()}
    if check.kind == OBJECT:
        target = owner_objs[check.obj]
        _assert_error(_call(client, method, _url(route, target.pk), world.tokens["other"],
                            _fill(check.body, other_objs)), 404)
        response = _call(client, method, _url(route, target.pk), world.tokens["owner"], _fill(check.body, owner_objs))
        assert response.status_code in (200, 202), (response.status_code, response.content[:300])
    elif check.kind == LIST:
        for who, objs, absent in (("owner", owner_objs, other_objs), ("other", other_objs, owner_objs)):
            response = _call(client, method, _url(route, 0), world.tokens[who], None)
            assert response.status_code == 200
            ids = {str(row["id"]) for row in response.json()["results"]}
            assert str(objs[check.obj].pk) in ids
            assert str(absent[check.obj].pk) not in ids, f"{who} sees the other customer's {check.obj}"
    elif check.kind == MINE:
        answers = {}
        for who, objs in (("owner", owner_objs), ("other", other_objs)):
            response = _call(client, method, _url(route, 0), world.tokens[who], _fill(check.body, objs))
            assert response.status_code in (200, 201), (who, response.status_code, response.content[:300])
            answers[who] = _dig(response.json(), check.mine)
        if route == "subscriptions/":
            # Subscribing someone else's account is refused like a missing one (400 naming the field).
            body = _fill(check.body, {**owner_objs, "account": world.objects["account"]["other"]})
            response = _call(client, method, _url(route, 0), world.tokens["owner"], body)
            _assert_error(response, 400)
            assert "account" in response.json()["error"]["fields"]
        elif check.mine != "positions_closed":
            assert answers["owner"] != answers["other"], f"both customers got the same {check.mine}"
    elif check.kind == STAFF:
        target = owner_objs.get(check.obj)
        url = _url(route, target.pk if target else 0)
        _assert_error(_call(client, method, url, world.tokens["other"], check.body), 403)
        response = _call(client, method, url, world.tokens["staff"], check.body)
        assert response.status_code in (200, 201), (response.status_code, response.content[:300])
    elif check.kind == SHARED:
        target = owner_objs[check.obj]
        assert _call(client, method, _url(route, target.pk), world.tokens["other"], None).status_code == 200
    else:
        pytest.fail(f"unknown check kind {check.kind}")


def test_emergency_stop_touches_only_the_callers_positions(client, world):
    mine, theirs = world.objects["position"]["owner"], world.objects["position"]["other"]
    response = _call(client, "POST", "/api/v1/emergency-stop/", world.tokens["owner"], None)
    assert response.status_code == 200, response.content
    assert response.json()["positions_closed"] == 1, response.json()
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.status == Position.Status.CLOSED and theirs.status == Position.Status.OPEN
    assert world.objects["account"]["other"].__class__.objects.get(pk=world.objects["account"]["other"].pk).enabled


def test_schema_and_docs_are_public_and_served_locally(client):
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200 and schema.json()["info"]["title"] == "TradeFlow API"
    docs = client.get("/api/v1/docs/").content.decode()
    assert "swagger-ui" in docs and "cdn" not in docs.lower() and "/static/drf_spectacular_sidecar/" in docs
    assert client.get("/api/v1/docs/redoc/").status_code == 200


def test_webhook_receivers_stay_outside_drf(client, paper):
    account, raw_key = paper
    response = client.post(f"/api/v1/webhooks/{raw_key}", b'{"version": "nope"}', content_type="text/plain")
    assert response.status_code == 422  # the webhook's own validation, not a DRF 401 or 415
    response = client.post("/api/v1/bots/webhook/master/no-such-bot", b'{"secret": "x"}',
                           content_type="text/plain")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("route", ["positions/", "orders/", "executions/", "signals/", "webhook-log/"])
def test_filtering_by_another_customers_account_finds_nothing(client, world, route):
    theirs = world.objects["account"]["other"].pk
    response = _call(client, "GET", f"/api/v1/{route}?account={theirs}", world.tokens["owner"], None)
    assert response.status_code == 200 and response.json()["results"] == []


def test_a_bot_signal_shows_each_follower_only_their_own_execution(client, world):
    bot = world.objects["bot"]["owner"]
    signal = Signal.objects.create(bot=bot, format=Signal.Format.BOT, body_hash="bot", payload={}, intent={},
                                   received_at=world.objects["account"]["owner"].created_at)
    for who in ("owner", "other"):
        Execution.objects.create(signal=signal, account=world.objects["account"][who],
                                 subscription=world.objects["subscription"][who], reason=f"{who} reason")
    for who in ("owner", "other"):
        body = _call(client, "GET", f"/api/v1/signals/{signal.pk}/", world.tokens[who], None).json()
        assert [e["reason"] for e in body["executions"]] == [f"{who} reason"]
    staff = _call(client, "GET", f"/api/v1/signals/{signal.pk}/", world.tokens["staff"], None)
    assert staff.status_code == 404  # the operator follows nothing: not their signal through the customer API
