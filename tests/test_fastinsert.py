"""``tradeflow.fastinsert``: ``insert`` stores what ``objects.create`` stores and ``update_many`` what ``bulk_update``
writes, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from decimal import Decimal

import time_machine
from django.utils import timezone

from brokers.models import Execution
from tradeflow.fastinsert import insert, update_many
from webhooks.models import Signal, WebhookLog


def test_insert_matches_create(paper, django_assert_num_queries):
    account, _ = paper
    signal_id = uuid.uuid4()
    now = timezone.now().replace(microsecond=123456)
    with time_machine.travel(now, tick=False):
        with django_assert_num_queries(1):
            signal = insert(Signal, id=signal_id, account=account, format="unify.v1", client_id="a1", body_hash="h",
                            payload={"x": "1.5", "nested": [1, None]}, intent={"side": "buy"}, source_ip="::1",
                            received_at=now, ack_ms=Decimal("1.25"))
        with django_assert_num_queries(1):
            execution = insert(Execution, signal=signal, account=account, kind=Execution.Kind.SIGNAL,
                               intent=signal.intent)
        log = insert(WebhookLog, account=account, signal=signal, method="POST", path="/p", source_ip="127.0.0.1",
                     status=202, payload="{}", response={"signal_id": str(signal_id)}, latency_ms=Decimal("0.5"),
                     error="")
    assert signal.pk == signal_id and not signal._state.adding
    stored = Signal.objects.get(pk=signal_id)
    assert (stored.account_id, stored.payload, stored.intent, stored.ack_ms, stored.received_at, stored.source_ip) == (
        account.pk, {"x": "1.5", "nested": [1, None]}, {"side": "buy"}, Decimal("1.25"), now, "::1")
    assert stored.total_subscribers == 0  # model defaults apply
    assert isinstance(execution.pk, int) and Execution.objects.get(pk=execution.pk).signal_id == signal_id
    fresh = Execution.objects.get(pk=execution.pk)
    assert (fresh.status, fresh.attempts, fresh.created_at, fresh.intent) == (
        Execution.Status.PENDING, 0, now, {"side": "buy"})  # defaults and auto_now_add
    stored_log = WebhookLog.objects.get(pk=log.pk)
    assert (stored_log.response, stored_log.latency_ms, stored_log.created_at, stored_log.bot_id) == (
        {"signal_id": str(signal_id)}, Decimal("0.50"), now, None)
    second = insert(Execution, signal=Signal.objects.create(
        account=account, format="unify.v1", body_hash="h2", payload={}, intent={}, received_at=now),
        account=account)
    assert second.pk > execution.pk


def _rows(account, signal_id, client_id="c1"):
    now = timezone.now()
    return (
        (Signal, dict(id=signal_id, account=account, format="unify.v1", client_id=client_id, body_hash="h",
                      payload={"a": 1}, intent={"side": "buy"}, received_at=now, ack_ms=Decimal("0.10"))),
        (Execution, dict(signal_id=signal_id, account=account, kind=Execution.Kind.SIGNAL, intent={"side": "buy"})),
        (WebhookLog, dict(account=account, signal_id=signal_id, method="POST", path="/p", status=202, payload="{}",
                          response={"ok": True}, latency_ms=Decimal("1"))),
    )


def test_insert_together_stores_all_rows_in_one_go(paper, django_assert_max_num_queries):
    from django.db import connection

    from tradeflow.fastinsert import insert_together

    account, _ = paper
    signal_id = uuid.uuid4()
    # PostgreSQL: one statement (plus the SAVEPOINT/RELEASE pair of the test's transaction).
    with django_assert_max_num_queries(3 if connection.vendor == "postgresql" else 5):
        signal, execution, log = insert_together(*_rows(account, signal_id))
    assert signal.pk == signal_id and isinstance(execution.pk, int) and isinstance(log.pk, int)
    assert Execution.objects.get(pk=execution.pk).signal_id == signal_id
    assert WebhookLog.objects.get(pk=log.pk).signal_id == signal_id
    assert Signal.objects.get(pk=signal_id).payload == {"a": 1}


def _all_or_nothing(account):
    import pytest
    from django.db import IntegrityError

    from tradeflow.fastinsert import insert_together

    insert_together(*_rows(account, uuid.uuid4(), client_id="same"))
    before = (Signal.objects.count(), Execution.objects.count(), WebhookLog.objects.count())
    with pytest.raises(IntegrityError):  # the signal's (account, client_id) is taken: nothing is stored
        insert_together(*_rows(account, uuid.uuid4(), client_id="same"))
    assert (Signal.objects.count(), Execution.objects.count(), WebhookLog.objects.count()) == before
    insert_together(*_rows(account, uuid.uuid4(), client_id="other"))  # the connection is still usable
    assert Signal.objects.count() == before[0] + 1


def test_insert_together_is_all_or_nothing_inside_a_transaction(paper):
    _all_or_nothing(paper[0])


def test_insert_together_is_all_or_nothing_in_autocommit(transactional_db, owner):
    from tests.factories import paper_account

    account, _ = paper_account(owner=owner)
    _all_or_nothing(account)


def test_update_many_writes_each_row_its_own_values(paper):
    account, _ = paper
    rows = [Execution.objects.create(account=account, kind="signal", intent={"n": n}) for n in range(3)]
    for n, row in enumerate(rows):
        row.status, row.reason, row.intent = "filled", f"done {n}", {"n": n, "done": True}
    assert update_many(rows, ["status", "reason", "intent"]) is None
    assert sorted(Execution.objects.values_list("reason", "status", "intent")) == [
        (f"done {n}", "filled", {"n": n, "done": True}) for n in range(3)]


def test_update_many_where_writes_only_the_rows_still_as_expected_and_says_which(paper):
    """The batch engine finishes only the executions it still holds: one another worker took over keeps its outcome."""
    account, _ = paper
    rows = [Execution.objects.create(account=account, kind="signal", intent={}, status="running", attempts=1)
            for _ in range(3)]
    Execution.objects.filter(pk=rows[1].pk).update(status="failed", attempts=2)  # taken over and finished
    for row in rows:
        row.status, row.reason = "filled", "batch"

    held = update_many(rows, ["status", "reason"], where={"status": "running", "attempts": 1})

    assert held == {rows[0].pk, rows[2].pk}
    assert dict(Execution.objects.values_list("pk", "status")) == {
        rows[0].pk: "filled", rows[1].pk: "failed", rows[2].pk: "filled"}
    assert update_many([], ["status"], where={"status": "running"}) == set()


def test_a_large_batch_goes_as_column_arrays_with_the_same_rows_and_pks_in_order(paper):
    """From UNNEST_ROWS rows on, inserts and updates send a column per parameter (UNNEST on PostgreSQL): JSON, UUID,
    Decimal, inet, aware datetimes and NULLs arrive as the ORM would store them, and the pks come back in order."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tradeflow.fastinsert import UNNEST_ROWS, insert_objects

    account, _ = paper
    n = UNNEST_ROWS + 4
    when = timezone.now()
    signals = [Signal(id=uuid.uuid4(), account=account, format="unify.v1", client_id=f"c{i}", body_hash="h",
                      payload={"i": i, "price": "1.5"}, intent={"i": i}, source_ip="10.0.0.1" if i % 2 else None,
                      received_at=when, ack_ms=Decimal(i) / 4) for i in range(n)]
    logs = [WebhookLog(account=account, signal=signal, method="POST", path=f"/p/{i}", status=202, payload="{}",
                       response={"n": i}, latency_ms=Decimal("0.25") * i, error="")
            for i, signal in enumerate(signals)]
    with CaptureQueriesContext(connection) as queries:
        insert_objects([signals, logs], savepoint=False)
    if connection.vendor == "postgresql":
        assert len(queries) == 1 and "UNNEST" in queries[0]["sql"]
    stored = {s.pk: s for s in Signal.objects.filter(account=account)}
    assert [stored[s.pk].intent for s in signals] == [{"i": i} for i in range(n)]
    assert [stored[s.pk].ack_ms for s in signals] == [Decimal(i) / 4 for i in range(n)]
    assert [stored[s.pk].source_ip for s in signals] == ["10.0.0.1" if i % 2 else None for i in range(n)]
    assert all(stored[s.pk].received_at == when for s in signals)
    # Each log row's pk is the row it was given for: its path and its signal say so.
    assert [(log.path, log.signal_id) for log in WebhookLog.objects.filter(pk__in=[x.pk for x in logs])
            .order_by("pk")] == [(f"/p/{i}", s.pk) for i, s in enumerate(signals)]

    for i, log in enumerate(logs):
        log.status, log.response, log.error = 200 + i, {"again": i}, f"e{i}"
    with CaptureQueriesContext(connection) as queries:
        update_many(logs, ["status", "response", "error"])
    if connection.vendor == "postgresql":
        assert len(queries) == 1 and "UNNEST" in queries[0]["sql"]
    assert sorted(WebhookLog.objects.filter(pk__in=[x.pk for x in logs]).values_list("status", "response", "error")) \
        == [(200 + i, {"again": i}, f"e{i}") for i in range(n)]
