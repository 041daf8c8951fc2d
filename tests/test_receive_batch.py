"""Account alerts received together (``webhook_receive_many``, fed by ``webhooks/asgi.py``'s natural batching) are
answered, logged, stored and enqueued exactly as the same requests one by one would be."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import time_machine
from django.core.cache import cache
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from brokers.models import Execution
from brokers.services import account_set_enabled
from tests.factories import UserFactory, paper_account
from tests.test_webhooks import FROZEN, OPTIONS, UNIFY
from webhooks.asgi import Batcher
from webhooks.models import Signal, WebhookLog
from webhooks.services import Inbound, Reply, webhook_receive, webhook_receive_many

PATH = "/api/v1/webhooks"


@pytest.fixture(params=["locmem", pytest.param("redis", marks=pytest.mark.redis)])
def cache_backend(request, settings):
    """The limiter and the de-duplication run on the test cache, and (``redis``) pipelined on a real Redis."""
    if request.param == "redis":
        settings.CACHES = {"default": {"BACKEND": "tradeflow.cache.SharedRedisCache",
                                       "LOCATION": settings.TEST_REDIS_URL, "KEY_PREFIX": f"t{uuid.uuid4().hex}"}}
    cache.clear()
    yield request.param
    cache.clear()


@pytest.fixture
def keys(db):
    """Five paper accounts' keys; the fourth account is disabled."""
    out = []
    for n in range(5):
        account, key = paper_account(owner=UserFactory(), label=f"Batch {n}")
        out.append(key)
        if n == 3:
            account_set_enabled(account=account, enabled=False)
    return out


def _requests(keys: list[str]) -> list[Inbound]:
    """One of each outcome, with the duplicates' originals earlier in the same batch. The limit is 3 a minute."""
    a, b, c, disabled, e = keys
    spec = [
        dict(path_key=a, body=UNIFY),                                      # 202
        dict(path_key=a, body=UNIFY),                                      # 200 duplicate of the first (body hash)
        dict(bearer=c, body={**OPTIONS, "id": "x1"}),                      # 202
        dict(bearer=c, body={**OPTIONS, "strike": "25100", "id": "x1"}),   # 200 duplicate of the third (explicit id)
        dict(path_key="tf_" + "0" * 43, body=UNIFY),                       # 401
        dict(path_key=disabled, body=UNIFY),                               # 403
        dict(path_key=e, body={"version": "unify.v1", "intent": {"side": "up", "qty": "-1"}}),  # 422
        dict(path_key=e, body='{"version": "unify.v1",'),                  # 400
        dict(path_key=e, body=UNIFY, declared_length=70_000),             # 413 (the limit counts it, as alone)
        *(dict(path_key=b, body={**UNIFY, "id": f"b{n}"}) for n in range(4)),  # 202 × 3, then 429
        dict(body={**UNIFY, "api_key": c, "id": "by-field"}),              # 202: the key as a body field
    ]
    out = []
    for item in spec:
        body = item.pop("body")
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        out.append(Inbound(request=None, method="POST", path=PATH, body=data, source_ip="10.0.0.9",
                           declared_length=item.pop("declared_length", len(data)), **item))
    return out


def _outcome(replies: list[Reply]) -> dict:
    """What a client and the log show, with each signal id named by the request whose signal it is."""
    names = {r.body["signal_id"]: n for n, r in enumerate(replies) if r.status == 202}
    answers = []
    for reply in replies:
        body = dict(reply.body)
        if "signal_id" in body:
            body["signal_id"] = names.get(body["signal_id"], "unknown")
        answers.append((reply.status, body))
    logs = sorted((log.status, log.error, log.payload, log.signal_id is not None)
                  for log in WebhookLog.objects.all())
    signals = sorted((names[str(s.id)], s.client_id, s.format) for s in Signal.objects.all())
    executions = sorted(names[str(e.signal_id)] for e in Execution.objects.all())
    return {"answers": answers, "logs": logs, "signals": signals, "executions": executions}


def _raises(exc: Exception):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _reset():
    WebhookLog.objects.all().delete()
    Execution.objects.all().delete()
    Signal.objects.all().delete()
    cache.clear()


def test_a_batch_is_answered_stored_and_logged_as_the_same_requests_one_by_one(
        keys, cache_backend, settings, django_capture_on_commit_callbacks, monkeypatch):
    settings.WEBHOOK_RATE_LIMIT = "3/m"
    with time_machine.travel(FROZEN, tick=False):
        with django_capture_on_commit_callbacks(execute=False):
            alone = _outcome([webhook_receive(inbound) for inbound in _requests(keys)])
        _reset()
        published = []
        monkeypatch.setattr("tradeflow.queue.enqueue", lambda task, *args, **kw: published.append(task.name))
        with django_capture_on_commit_callbacks(execute=True):
            together = _outcome(webhook_receive_many(_requests(keys)))

    assert together == alone
    statuses = [status for status, _ in together["answers"]]
    assert statuses == [202, 200, 202, 200, 401, 403, 422, 400, 413, 202, 202, 202, 429, 202]
    assert together["answers"][1][1] == {"signal_id": 0, "status": "accepted", "duplicate": True}
    assert together["answers"][3][1]["signal_id"] == 2
    assert len(together["signals"]) == len(together["executions"]) == 6
    assert len(together["logs"]) == 14  # every request, good or bad, has its row
    # One drain message for the six paper entries, not one each (the drain takes whatever is waiting).
    assert published == ["brokers.tasks.executions_drain_task"]


@pytest.mark.pg
def test_a_batch_costs_the_statements_of_one_alert(keys, django_capture_on_commit_callbacks):
    """Key lookup, then one statement for every signal, execution and log row of the batch (plus its savepoint
    inside the test's transaction); last_used written for the keys not seen this minute."""
    def inbound(n: int, key: str) -> Inbound:
        data = json.dumps({**UNIFY, "id": f"q{n}"}).encode()
        return Inbound(request=None, method="POST", path=PATH, body=data, declared_length=len(data),
                       source_ip="10.0.0.9", path_key=key)

    webhook_receive_many([inbound(-1, keys[0]), inbound(-2, keys[1])])  # last_used fresh from here on
    counts = []
    for size in (1, 12):
        with django_capture_on_commit_callbacks(execute=False), CaptureQueriesContext(connection) as queries:
            replies = webhook_receive_many([inbound(size * 100 + n, keys[n % 2]) for n in range(size)])
        assert {r.status for r in replies} == {202}
        counts.append(len(queries))
    assert counts == [4, 4]


def test_an_id_the_cache_forgot_is_a_duplicate_and_the_rest_of_the_batch_is_stored(
        keys, django_capture_on_commit_callbacks):
    """The database's unique id is the last word: the batch statement fails whole, and each alert is stored on its
    own, so only the reused id is refused (as a duplicate of the signal that has it) and nothing is lost."""
    def inbound(body: dict) -> Inbound:
        data = json.dumps(body).encode()
        return Inbound(request=None, method="POST", path=PATH, body=data, declared_length=len(data),
                       source_ip="10.0.0.9", path_key=keys[0])

    with django_capture_on_commit_callbacks(execute=False):
        first = webhook_receive(inbound({**UNIFY, "id": "kept"}))
        cache.clear()  # the cache forgets; the database does not
        replies = webhook_receive_many([inbound({**UNIFY, "id": "new-1"}), inbound({**UNIFY, "id": "kept"}),
                                        inbound({**UNIFY, "id": "new-2"}), inbound({"bad": 1})])

    assert [r.status for r in replies] == [202, 200, 202, 422]
    assert replies[1].body == {"signal_id": first.body["signal_id"], "status": "accepted", "duplicate": True}
    assert set(Signal.objects.values_list("client_id", flat=True)) == {"kept", "new-1", "new-2"}
    assert Execution.objects.count() == 3 and WebhookLog.objects.count() == 5
    assert WebhookLog.objects.filter(status=200, error="duplicate alert").count() == 1


def test_a_failed_store_answers_every_alert_of_the_batch_with_the_error_and_frees_their_claims(keys, monkeypatch):
    def inbound(n: int) -> Inbound:
        data = json.dumps({**UNIFY, "id": f"f{n}"}).encode()
        return Inbound(request=None, method="POST", path=PATH, body=data, declared_length=len(data),
                       source_ip="10.0.0.9", path_key=keys[0])

    with monkeypatch.context() as patched:
        patched.setattr("webhooks.services.insert_many", _raises(RuntimeError("database went away")))
        with pytest.raises(RuntimeError):
            webhook_receive_many([inbound(1), inbound(2)])
    assert not Signal.objects.exists()
    # Their de-duplication claims were released: TradingView's resend is accepted, not called a duplicate.
    assert [r.status for r in webhook_receive_many([inbound(1), inbound(2)])] == [202, 202]


def test_the_batcher_sends_what_waits_together_and_never_more_than_its_receivers_at_once():
    in_flight, batches = [], []

    async def run(inbounds):
        in_flight.append(1)
        peak.append(len(in_flight))
        batches.append(list(inbounds))
        await asyncio.sleep(0.01)
        in_flight.pop()
        if "boom" in inbounds:
            raise RuntimeError("store failed")
        return [Reply(202, {"echo": inbound}) for inbound in inbounds]

    peak: list[int] = []

    async def main():
        two = Batcher(run, receivers=2, size=5)
        first = await two.receive("alone")
        burst = await asyncio.gather(*(two.receive(n) for n in range(13)))
        ok = asyncio.ensure_future(two.receive("ok"))
        await asyncio.sleep(0.002)  # the first receiver has taken it and is busy
        apart = await asyncio.gather(ok, two.receive("boom"), return_exceptions=True)
        one = Batcher(run, receivers=1, size=5)
        together = await asyncio.gather(*(one.receive(x) for x in ("a", "boom", "c")), return_exceptions=True)
        return first, burst, apart, together

    first, burst, apart, together = asyncio.run(main())
    assert first.body == {"echo": "alone"} and batches[0] == ["alone"]  # a quiet server: no waiting for company
    assert [reply.body["echo"] for reply in burst] == list(range(13))  # each request gets its own reply
    assert batches[1:4] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12]] and max(peak) == 2
    # Two free receivers: two batches, and only the failing one's request gets the error.
    assert apart[0].body == {"echo": "ok"} and isinstance(apart[1], RuntimeError)
    # One receiver: the three waited together, and each of them gets its batch's error.
    assert batches[-1] == ["a", "boom", "c"] and all(isinstance(x, RuntimeError) for x in together)


def test_an_integrity_error_outside_the_explicit_id_is_not_swallowed(keys, monkeypatch):
    data = json.dumps(UNIFY).encode()
    inbound = Inbound(request=None, method="POST", path=PATH, body=data, declared_length=len(data),
                      source_ip="10.0.0.9", path_key=keys[0])
    monkeypatch.setattr("webhooks.services.insert_many", _raises(IntegrityError("fk")))
    monkeypatch.setattr("webhooks.services.insert_together", _raises(IntegrityError("fk")))
    with pytest.raises(IntegrityError):
        webhook_receive_many([inbound])


@pytest.mark.redis
def test_a_batch_shares_its_redis_round_trips(keys, settings, monkeypatch, django_capture_on_commit_callbacks):
    """Five alerts (two accounts and an unknown key): one pipeline for the five key limits, one for the unknown key's
    address limit, one for the four de-duplication claims; nothing per alert."""
    import redis.client

    settings.CACHES = {"default": {"BACKEND": "tradeflow.cache.SharedRedisCache",
                                   "LOCATION": settings.TEST_REDIS_URL, "KEY_PREFIX": f"t{uuid.uuid4().hex}"}}
    trips = []
    pipelined, single = redis.client.Pipeline.execute, redis.client.Redis.execute_command
    monkeypatch.setattr(redis.client.Pipeline, "execute", lambda self, *a, **k: trips.append(len(self)) or
                        pipelined(self, *a, **k))
    monkeypatch.setattr(redis.client.Redis, "execute_command", lambda self, *a, **k: trips.append(a[0]) or
                        single(self, *a, **k))
    inbounds = []
    for n in range(5):
        key = keys[n % 2] if n < 4 else "tf_" + "1" * 43
        data = json.dumps({**UNIFY, "id": f"r{n}"}).encode()
        inbounds.append(Inbound(request=None, method="POST", path=PATH, body=data, declared_length=len(data),
                                source_ip="10.0.0.9", path_key=key))
    with django_capture_on_commit_callbacks(execute=False):
        replies = webhook_receive_many(inbounds)
    assert [r.status for r in replies] == [202, 202, 202, 202, 401]
    assert trips == [2 * 5, 2 * 1, 4]  # SET NX + INCR per limit, SET NX per claim
    cache.clear()


def test_a_stopping_server_cancels_the_requests_of_the_batch_in_flight():
    async def run(inbounds):
        await asyncio.Event().wait()  # a store that never finishes

    async def main():
        batcher = Batcher(run, receivers=1, size=5)
        waiting = [asyncio.ensure_future(batcher.receive(n)) for n in range(3)]
        await asyncio.sleep(0.01)
        assert len(batcher.tasks) == 1  # the receiver is held, so it cannot vanish mid-batch
        for task in list(batcher.tasks):
            task.cancel()
        done = await asyncio.gather(*waiting, return_exceptions=True)
        return done, batcher

    done, batcher = asyncio.run(main())
    assert all(isinstance(x, asyncio.CancelledError) for x in done) and batcher.busy == 0 and not batcher.tasks
