"""The account webhook endpoint end to end through Django's test client."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
import time_machine
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from brokers.models import AccountApiKey, Execution, Order, PaperOrder, Position
from brokers.services import account_set_enabled, api_key_regenerate
from tests.asgi_client import webhook_router_client
from tests.factories import paper_account
from webhooks.models import Signal, WebhookLog

URL = "/api/v1/webhooks"
UNIFY = {"version": "unify.v1", "intent": {"side": "buy", "type": "market", "symbol": "BTCUSDT", "qty": "0.5",
                                           "price": "50000"}}
OPTIONS = {"signal": "S1", "strike": "25000", "type": "PE", "action": "Entry", "spot_price": 24481}
UNAUTHORIZED = {"error": {"code": "unauthorized", "message": (
    "Missing or unknown API key: put it in the URL (/api/v1/webhooks/<key>), an 'Authorization: Bearer <key>' "
    "header or an \"api_key\" field"), "fields": {}}}
# A moment well inside a rate-limit window, so windows never roll over mid-test.
FROZEN = timezone.now().replace(second=5, microsecond=0)


@pytest.fixture(params=["django", "asgi"])
def client(request, client):
    """Each test runs twice: through the Django view, and the way uvicorn serves it (webhooks/asgi.py)."""
    return client if request.param == "django" else webhook_router_client()


def post(client, path: str = URL, body=UNIFY, content_type: str = "text/plain", **extra):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(path, data=data, content_type=content_type, **extra)


def error_of(response) -> dict:
    return response.json()["error"]


def last_log() -> WebhookLog:
    return WebhookLog.objects.order_by("-pk").first()


# --- accepted alerts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/"])
def test_key_in_path_with_or_without_trailing_slash(client, paper, suffix):
    account, key = paper
    response = post(client, f"{URL}/{key}{suffix}")
    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == {"signal_id", "status"} and body["status"] == "accepted"
    signal = Signal.objects.get(pk=uuid.UUID(body["signal_id"]))
    assert signal.account == account and signal.format == "unify.v1"
    assert signal.intent["symbol"] == "BTCUSDT" and signal.intent["qty"] == "0.5"
    execution = Execution.objects.get(signal=signal)
    assert (execution.account, execution.status) == (account, Execution.Status.PENDING)
    log = last_log()
    assert (log.status, log.account, log.signal, log.method, log.response) == (202, account, signal, "POST", body)
    assert log.source_ip == "127.0.0.1" and log.latency_ms >= 0 and log.error == ""


@pytest.mark.parametrize("header", ["Bearer {key}", "bearer {key}", "BEARER   {key} "])
def test_key_as_bearer_header(client, paper, header):
    account, key = paper
    response = post(client, URL, headers={"Authorization": header.format(key=key)})
    assert response.status_code == 202, response.content
    assert Signal.objects.get(pk=response.json()["signal_id"]).account == account


@pytest.mark.parametrize("path", [URL, f"{URL}/"])
def test_key_as_api_key_field_is_never_stored(client, paper, path):
    account, key = paper
    response = post(client, path, {**UNIFY, "api_key": key})
    assert response.status_code == 202, response.content
    signal = Signal.objects.get(pk=response.json()["signal_id"])
    assert signal.account == account
    assert signal.payload["api_key"] == "[redacted]"
    assert json.loads(last_log().payload)["api_key"] == "[redacted]"


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "application/x-www-form-urlencoded",
                                          "text/plain; charset=utf-8", ""])
def test_body_is_json_whatever_the_content_type(client, paper, content_type):
    _, key = paper
    response = post(client, f"{URL}/{key}", content_type=content_type)
    assert response.status_code == 202, response.content


def test_options_format_alert(client, paper):
    _, key = paper
    response = post(client, f"{URL}/{key}", OPTIONS)
    assert response.status_code == 202, response.content
    signal = Signal.objects.get(pk=response.json()["signal_id"])
    assert signal.format == "options"
    assert (signal.intent["action"], signal.intent["symbol"]) == ("entry", "NIFTY 25000 PE")


def test_alert_is_executed_only_after_commit_never_inside_the_request(client, paper,
                                                                      django_capture_on_commit_callbacks):
    account, key = paper
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post(client, f"{URL}/{key}")
    assert response.status_code == 202
    # The request answered without touching the broker: nothing placed, nothing filled yet.
    assert not Order.objects.exists() and not PaperOrder.objects.exists() and not Position.objects.exists()
    assert Execution.objects.get().status == Execution.Status.PENDING
    assert len(callbacks) == 1
    callbacks[0]()
    execution = Execution.objects.get()
    assert execution.status == Execution.Status.FILLED, execution.reason
    order = Order.objects.get()
    assert (order.account, order.symbol, order.side, order.status) == (account, "BTCUSDT", "buy", "filled")


def test_a_nan_outside_the_known_fields_is_stored_as_text(client, paper):
    _, key = paper
    body = '{"version": "unify.v1", "note": NaN, "intent": {"side": "buy", "symbol": "X", "qty": 1, "price": 9}}'
    response = post(client, f"{URL}/{key}", body)
    assert response.status_code == 202, response.content
    assert Signal.objects.get().payload["note"] == "NaN"


def test_last_used_is_recorded(client, paper):
    account, key = paper
    assert account.webhook_key.last_used is None
    post(client, f"{URL}/{key}")
    assert AccountApiKey.objects.get(account=account).last_used is not None


# --- duplicates --------------------------------------------------------------------------------------


def test_identical_body_twice_is_one_signal_and_one_order(client, paper, django_capture_on_commit_callbacks):
    account, key = paper
    with django_capture_on_commit_callbacks(execute=True):
        first = post(client, f"{URL}/{key}")
        second = post(client, f"{URL}/{key}")
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == {"signal_id": first.json()["signal_id"], "status": "accepted", "duplicate": True}
    assert Signal.objects.count() == Execution.objects.count() == 1
    assert Order.objects.count() == 1
    assert Position.objects.get().qty == 0.5
    assert list(WebhookLog.objects.order_by("pk").values_list("status", "error")) == [
        (202, ""), (200, "duplicate alert")]


def test_same_body_by_another_route_is_still_a_duplicate(client, paper):
    _, key = paper
    first = post(client, f"{URL}/{key}")
    second = post(client, URL, headers={"Authorization": f"Bearer {key}"})
    assert second.status_code == 200 and second.json()["signal_id"] == first.json()["signal_id"]


def test_explicit_id_dedupes_different_bodies(client, paper):
    _, key = paper
    first = post(client, f"{URL}/{key}", {**UNIFY, "id": "order-7"})
    other = {"version": "unify.v1", "intent": {**UNIFY["intent"], "qty": "2"}, "id": "order-7"}
    second = post(client, f"{URL}/{key}", other)
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["signal_id"] == first.json()["signal_id"] and second.json()["duplicate"] is True
    assert Signal.objects.get().client_id == "order-7"


def test_explicit_id_is_remembered_by_the_database_after_the_cache_forgets(client, paper):
    _, key = paper
    first = post(client, f"{URL}/{key}", {**UNIFY, "id": 99})
    cache.clear()
    second = post(client, f"{URL}/{key}", {**UNIFY, "id": "99", "note": "resent"})
    assert second.status_code == 200, second.content
    assert second.json() == {"signal_id": first.json()["signal_id"], "status": "accepted", "duplicate": True}
    assert Signal.objects.count() == Execution.objects.count() == 1


def test_different_ids_are_different_signals(client, paper):
    _, key = paper
    ids = {post(client, f"{URL}/{key}", {**UNIFY, "id": n}).json()["signal_id"] for n in ("a", "b")}
    assert len(ids) == 2 and Signal.objects.count() == 2


def test_different_body_is_a_new_signal(client, paper):
    _, key = paper
    first = post(client, f"{URL}/{key}")
    second = post(client, f"{URL}/{key}", {**UNIFY, "intent": {**UNIFY["intent"], "side": "sell"}})
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["signal_id"] != second.json()["signal_id"]


def test_same_body_to_another_account_is_not_a_duplicate(client, paper, other):
    _, key = paper
    _, other_key = paper_account(owner=other)
    assert post(client, f"{URL}/{key}").status_code == 202
    assert post(client, f"{URL}/{other_key}").status_code == 202


def test_same_body_after_the_dedupe_window_is_a_new_signal(client, paper, settings):
    _, key = paper
    with time_machine.travel(FROZEN, tick=False) as clock:
        first = post(client, f"{URL}/{key}")
        clock.shift(timedelta(seconds=settings.WEBHOOK_DEDUPE_SECONDS - 5))
        inside = post(client, f"{URL}/{key}")
        clock.shift(timedelta(seconds=10))
        after = post(client, f"{URL}/{key}")
    assert (first.status_code, inside.status_code, after.status_code) == (202, 200, 202)
    assert inside.json()["signal_id"] == first.json()["signal_id"] != after.json()["signal_id"]
    assert Signal.objects.count() == 2


# --- errors ------------------------------------------------------------------------------------------


def test_malformed_json_names_line_and_column(client, paper):
    account, key = paper
    response = post(client, f"{URL}/{key}", '{"signal": "S1",\n  "strike": 25000,\n  "type": PE}')
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "malformed_json"
    assert "line 3 column 11" in error["message"]
    log = last_log()
    assert (log.status, log.error, log.account) == (400, error["message"], None)
    assert '"type": PE' in log.payload  # the raw text is kept for the customer to see
    assert not Signal.objects.exists()


@pytest.mark.parametrize("body", ["", "   "])
def test_empty_body(client, paper, body):
    _, key = paper
    response = post(client, f"{URL}/{key}", body)
    assert response.status_code == 400
    assert "empty" in error_of(response)["message"]


def test_unknown_and_missing_keys_get_the_identical_401(client, paper):
    account, key = paper
    unknown_path = post(client, f"{URL}/tf_{'x' * 43}")
    unknown_bearer = post(client, URL, headers={"Authorization": "Bearer tf_nope"})
    unknown_field = post(client, URL, {**UNIFY, "api_key": key + "x"})
    missing = post(client, URL)
    for response in (unknown_path, unknown_bearer, unknown_field, missing):
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
    assert unknown_path.content == missing.content
    assert list(WebhookLog.objects.values_list("status", flat=True)) == [401] * 4
    assert not WebhookLog.objects.exclude(account=None).exists()
    assert not Signal.objects.exists()


def test_non_string_api_key_field_is_unauthorized(client, paper):
    response = post(client, URL, {**UNIFY, "api_key": 12345})
    assert response.status_code == 401


def test_disabled_account_is_403_and_nothing_is_stored(client, paper):
    account, key = paper
    account_set_enabled(account=account, enabled=False)
    response = post(client, f"{URL}/{key}")
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "account_disabled" and "Paper" in error["message"] and "enable" in error["message"]
    assert not Signal.objects.exists() and not Execution.objects.exists()
    assert (last_log().status, last_log().account) == (403, account)


def test_body_over_64_kib_is_413(client, paper):
    _, key = paper
    big = json.dumps({**UNIFY, "pad": "x" * 65536})
    response = post(client, f"{URL}/{key}", big)
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "payload_too_large" and f"{len(big)} bytes" in error["message"]
    assert "64 KiB" in error["message"]
    assert last_log().status == 413 and not Signal.objects.exists()


def test_body_of_exactly_64_kib_is_accepted(client, paper):
    _, key = paper
    body = json.dumps({**UNIFY, "pad": ""})
    body = body.replace('"pad": ""', '"pad": "' + "x" * (65536 - len(body)) + '"')
    assert len(body.encode()) == 65536
    assert post(client, f"{URL}/{key}", body).status_code == 202


def test_content_length_claim_over_64_kib_is_413_without_reading_the_body(client, paper):
    _, key = paper
    response = post(client, f"{URL}/{key}", CONTENT_LENGTH="10000000")
    assert response.status_code == 413
    assert "10000000 bytes" in error_of(response)["message"]
    assert last_log().status == 413 and last_log().payload == ""
    assert not Signal.objects.exists()


def test_invalid_fields_are_each_named_in_the_422(client, paper):
    account, key = paper
    body = {"version": "unify.v1", "id": True, "intent": {
        "side": "hold", "type": "limit", "symbol": "", "qty": "NaN", "sl": {"mode": "atr", "value": 1},
        "tp": {"mode": "pct", "value": False}}}
    response = post(client, f"{URL}/{key}", body)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_fields"
    assert set(error["fields"]) == {"id", "intent.side", "intent.symbol", "intent.qty", "intent.price",
                                    "intent.sl.mode", "intent.tp.value"}
    assert error["fields"]["intent.qty"] == "must be a finite number"
    assert error["fields"]["intent.tp.value"] == "must be a number, got bool"
    for name in error["fields"]:
        assert name in error["message"]
    log = last_log()
    assert (log.status, log.account, log.response) == (422, account, response.json())
    assert not Signal.objects.exists() and not Execution.objects.exists()


@pytest.mark.parametrize("body, field", [
    ('[{"signal": "S1"}]', "body"),
    ('"buy"', "body"),
    ("42", "body"),
    ('{"ticker": "BTCUSDT", "action": "buy"}', "body"),
    ('{"signal": "S1", "strike": "25k", "type": "PE", "action": "ENTRY"}', "strike"),
    ('{"signal": "S1", "strike": 25000, "type": "PE", "action": "HOLD"}', "action"),
    ('{"version": "unify.v1", "intent": {"side": "buy", "symbol": "X", "qty": "1"}, "id": {"a": 1}}', "id"),
])
def test_422_names_the_field(client, paper, body, field):
    _, key = paper
    response = post(client, f"{URL}/{key}", body)
    assert response.status_code == 422, response.content
    assert list(error_of(response)["fields"]) == [field]


def test_rate_limit_per_key_is_429(client, paper, other, settings):
    settings.WEBHOOK_RATE_LIMIT = "2/m"
    _, key = paper
    _, other_key = paper_account(owner=other)
    with time_machine.travel(FROZEN, tick=False):
        statuses = [post(client, f"{URL}/{key}", {**UNIFY, "id": n}).status_code for n in range(3)]
        limited = post(client, f"{URL}/{key}", {**UNIFY, "id": "x"})
        elsewhere = post(client, f"{URL}/{other_key}")
    assert statuses == [202, 202, 429]
    assert limited.status_code == 429
    error = error_of(limited)
    assert error["code"] == "rate_limited" and "2/m" in error["message"]
    assert elsewhere.status_code == 202  # the limit is per key
    assert Signal.objects.count() == 3
    assert last_log().status == 202
    assert WebhookLog.objects.filter(status=429).count() == 2


def test_rate_limit_frees_up_in_the_next_window(client, paper, settings):
    settings.WEBHOOK_RATE_LIMIT = "1/m"
    _, key = paper
    with time_machine.travel(FROZEN, tick=False) as clock:
        assert post(client, f"{URL}/{key}", {**UNIFY, "id": 1}).status_code == 202
        assert post(client, f"{URL}/{key}", {**UNIFY, "id": 2}).status_code == 429
        clock.shift(timedelta(seconds=60))
        assert post(client, f"{URL}/{key}", {**UNIFY, "id": 2}).status_code == 202


def test_guessing_keys_is_rate_limited_per_address(client, paper, settings):
    settings.WEBHOOK_UNKNOWN_KEY_RATE_LIMIT = "3/m"
    with time_machine.travel(FROZEN, tick=False):
        statuses = [post(client, f"{URL}/tf_guess{n:020d}").status_code for n in range(4)]
    assert statuses == [401, 401, 401, 429]


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_other_methods_are_405_and_logged(client, paper, method):
    _, key = paper
    response = getattr(client, method)(f"{URL}/{key}")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert error_of(response)["code"] == "method_not_allowed"
    log = last_log()
    assert (log.status, log.method) == (405, method.upper())
    assert key not in log.path
    assert not Signal.objects.exists()


# --- the log, and keys never in it -------------------------------------------------------------------


def _every_kind_of_request(client, key: str) -> list[int]:
    path = f"{URL}/{key}"
    responses = [
        post(client, path),
        post(client, path),  # duplicate
        post(client, f"{path}/", {**UNIFY, "api_key": key, "secret": "hunter2", "id": "k1"}),
        post(client, URL, {**UNIFY, "id": "k2"}, headers={"Authorization": f"Bearer {key}"}),
        post(client, URL, {**UNIFY, "api_key": key, "id": "k3", "intent": {"side": "buy"}}),  # 422
        post(client, path, '{"api_key": "' + key + '", "broken'),  # 400
        post(client, path, ""),
        post(client, path, json.dumps({"api_key": key, "pad": "x" * 70000})),  # 413
        post(client, path, CONTENT_LENGTH="999999"),
        post(client, URL, {**UNIFY, "api_key": key[:-2]}),  # 401
        client.get(path),
    ]
    return [r.status_code for r in responses]


def test_every_request_gets_exactly_one_log_row(client, paper):
    _, key = paper
    statuses = _every_kind_of_request(client, key)
    assert statuses == [202, 200, 202, 202, 422, 400, 400, 413, 413, 401, 405]
    assert list(WebhookLog.objects.order_by("pk").values_list("status", flat=True)) == statuses


def test_the_api_key_is_never_stored_in_a_log_row(client, paper):
    account, key = paper
    _every_kind_of_request(client, key)
    prefix = account.webhook_key.prefix
    rows = list(WebhookLog.objects.order_by("pk"))
    assert len(rows) == 11
    for row in rows:
        stored = json.dumps([row.path, row.payload, row.response, row.error])
        assert key not in stored
        assert key[9:] not in stored  # not even the secret part without the visible prefix
        assert "hunter2" not in stored
    for signal in Signal.objects.all():
        assert key not in json.dumps(signal.payload)
    path_rows = [r for r in rows if r.path.startswith(f"{URL}/tf_")]
    assert path_rows and all(r.path.startswith(f"{URL}/{prefix}…") for r in path_rows)
    redacted = [json.loads(r.payload) for r in rows if r.status == 202 and '"api_key"' in r.payload]
    assert redacted and all(p["api_key"] == "[redacted]" and p["secret"] == "[redacted]" for p in redacted)


# --- key regeneration --------------------------------------------------------------------------------


def test_regenerated_key_replaces_the_old_one_at_once(client, paper):
    account, old_key = paper
    assert post(client, f"{URL}/{old_key}", {**UNIFY, "id": 1}).status_code == 202
    new_key = api_key_regenerate(account=account).raw
    assert new_key != old_key and new_key.startswith("tf_")
    assert post(client, f"{URL}/{old_key}", {**UNIFY, "id": 2}).status_code == 401
    assert post(client, URL, {**UNIFY, "id": 3}, headers={"Authorization": f"Bearer {old_key}"}).status_code == 401
    response = post(client, f"{URL}/{new_key}", {**UNIFY, "id": 4})
    assert response.status_code == 202
    assert Signal.objects.get(pk=response.json()["signal_id"]).account == account


# --- the hot path's cost -----------------------------------------------------------------------------

# Accepting an alert: the key lookup, the last_used write (at most once a minute per key), then the signal,
# the execution and the log row all or nothing. On PostgreSQL that is one INSERT statement (inside a test
# wrapped in a SAVEPOINT/RELEASE pair): 5 queries counted on the first alert of the minute and 4 after it.
# On SQLite three INSERTs in one transaction (a SAVEPOINT/RELEASE pair here): 7, then 6.
# A regression (say, a per-request lookup of the owner's settings) fails here.
HOT_PATH_QUERIES = 5 if connection.vendor == "postgresql" else 7


def test_query_count_on_the_webhook_hot_path(client, paper, django_assert_max_num_queries):
    _, key = paper
    with django_assert_max_num_queries(HOT_PATH_QUERIES):
        assert post(client, f"{URL}/{key}", {**UNIFY, "id": 1}).status_code == 202
    with django_assert_max_num_queries(HOT_PATH_QUERIES - 1):  # last_used is fresh: no write
        assert post(client, f"{URL}/{key}", {**UNIFY, "id": 2}).status_code == 202


def test_query_count_for_a_duplicate_and_a_bad_key(client, paper, django_assert_max_num_queries):
    _, key = paper
    post(client, f"{URL}/{key}")
    with django_assert_max_num_queries(2):  # key lookup + log row
        assert post(client, f"{URL}/{key}").status_code == 200
    with django_assert_max_num_queries(2):
        assert post(client, f"{URL}/tf_{'0' * 43}").status_code == 401


def test_the_key_lookup_is_one_query_without_the_credentials(paper, django_assert_num_queries):
    from brokers.services import api_key_authenticate

    account, key = paper
    AccountApiKey.objects.filter(account=account).update(last_used=timezone.now())
    with django_assert_num_queries(1) as captured:
        found = api_key_authenticate(key)
    sql = captured.captured_queries[0]["sql"]
    assert "api_secret" not in sql and "access_token" not in sql
    assert found.get_deferred_fields() == {"api_key", "api_secret", "access_token"}
    assert found.api_secret == account.api_secret  # loads on access


def test_last_used_is_written_at_most_once_a_minute(client, paper):
    account, key = paper
    with time_machine.travel(FROZEN, tick=False) as clock:
        assert post(client, f"{URL}/{key}", {**UNIFY, "id": 1}).status_code == 202
        first = AccountApiKey.objects.get(account=account).last_used
        assert first == timezone.now()
        clock.shift(timedelta(seconds=59))
        assert post(client, f"{URL}/{key}", {**UNIFY, "id": 2}).status_code == 202
        assert AccountApiKey.objects.get(account=account).last_used == first
        clock.shift(timedelta(seconds=2))
        assert post(client, f"{URL}/{key}", {**UNIFY, "id": 3}).status_code == 202
        assert AccountApiKey.objects.get(account=account).last_used == timezone.now()


def test_the_key_lookup_returns_the_whole_account(paper):
    from brokers.services import api_key_authenticate

    account, key = paper
    found = api_key_authenticate(key)
    assert found.pk == account.pk and found.label == account.label and found.enabled
    assert found.owner == account.owner  # loads on demand
    assert api_key_authenticate("tf_" + "0" * 43) is None and api_key_authenticate("") is None


@pytest.mark.redis
def test_the_pipelined_redis_limiter_counts_like_django_ratelimit(settings):
    """On the shared Redis cache the limiter is one round trip, in django-ratelimit's own key and window."""
    from django.test import RequestFactory
    from django_ratelimit.core import get_usage

    from webhooks.services import Inbound, rate_limited

    settings.CACHES = {"default": {"BACKEND": "tradeflow.cache.SharedRedisCache",
                                   "LOCATION": settings.TEST_REDIS_URL, "KEY_PREFIX": f"t{uuid.uuid4().hex}"}}
    request = RequestFactory().post(URL)
    inbound = Inbound(request=request, method="POST", path=URL, body=b"{}", source_ip="127.0.0.1")
    key = uuid.uuid4().hex

    def stock(increment=True):
        return get_usage(request, group="webhook.key", key=lambda _g, _r: key, rate="3/m", increment=increment)

    assert rate_limited(inbound, key, "3/m", "webhook.key") is False  # 1
    assert stock()["count"] == 2  # django-ratelimit sees (and adds to) the same counter
    assert rate_limited(inbound, key, "3/m", "webhook.key") is False  # 3
    assert rate_limited(inbound, key, "3/m", "webhook.key") is True  # 4
    usage = stock(increment=False)
    assert usage["count"] == 4 and usage["should_limit"]
    assert rate_limited(inbound, uuid.uuid4().hex, "3/m", "webhook.key") is False  # per key
    client = cache._cache.get_client(write=True)
    keys = list(client.scan_iter(match=f"{settings.CACHES['default']['KEY_PREFIX']}:*"))
    ttls = [client.ttl(k) for k in keys]
    client.delete(*keys)
    assert len(keys) == 2 and all(0 < ttl <= 65 for ttl in ttls)  # the window's length plus django-ratelimit's fudge
