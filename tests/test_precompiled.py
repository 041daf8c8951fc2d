"""``Precompiled``: an ORM query compiled once, run with new values, gives what the queryset itself gives."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext

from brokers.models import Execution
from brokers.services import batch
from risk.models import TradingHalt
from risk.selectors import trading_halted
from tests.factories import UserFactory, paper_account
from tradeflow.precompiled import Precompiled
from webhooks.models import Signal


def _alert(account, n: int) -> Execution:
    signal = Signal.objects.create(account=account, format="unify.v1", body_hash=f"h{n}", payload={}, received_at=
                                   "2026-01-01T00:00:00Z", intent={"action": "entry", "format": "unify.v1"})
    return Execution.objects.create(signal=signal, account=account, kind=Execution.Kind.SIGNAL, intent=signal.intent)


def _seen(executions) -> list:
    """What the drain reads from each row: the execution, its account, owner, owner's settings and signal."""
    return [(e.pk, e.status, e.account.label, e.account.owner.email, e.account.owner.trading_settings.pk,
             e.signal.body_hash) for e in executions]


def test_the_same_rows_and_related_objects_as_the_queryset_with_each_call_s_values(db):
    accounts = [paper_account(owner=UserFactory(), label=f"P{n}")[0] for n in range(2)]
    made = [_alert(accounts[n % 2], n) for n in range(5)]
    build = lambda own, account: batch._rows(Q(pk=own) | Q(account_id=account)).order_by("pk")  # noqa: E731
    select = Precompiled(build, model=Execution, arity=2)

    for own, account in ((made[0].pk, accounts[1].pk), (made[3].pk, accounts[0].pk), (-1, -1)):
        with CaptureQueriesContext(connection) as queries:
            got = select(own, account)
        assert _seen(got) == _seen(build(own, account)) and len(queries) == 1  # related objects came with the rows
    assert [e.pk for e in select(made[0].pk, accounts[1].pk)] == [made[0].pk, made[1].pk, made[3].pk]


def test_each_thread_runs_it_on_its_own_connection(transactional_db):
    account, _ = paper_account(owner=UserFactory())
    made = _alert(account, 1)
    select = Precompiled(lambda own: Execution.objects.filter(pk=own), model=Execution, arity=1)
    assert select(made.pk)[0].pk == made.pk  # compiled on this thread
    out = []

    def other():
        from django.db import connections

        try:
            out.append(select(made.pk)[0].pk)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert out == [made.pk]


def test_an_argument_the_sql_does_not_carry_is_refused(db):
    select = Precompiled(lambda n: Execution.objects.all()[:n], model=Execution, arity=1)  # LIMIT is inlined
    with pytest.raises(ValueError, match="SQL parameter"):
        select(3)


def test_the_kill_switch_reads_its_latest_change(db):
    assert trading_halted() is False
    TradingHalt.objects.create(halted=True)
    assert trading_halted() is True
    TradingHalt.objects.create(halted=False)
    assert trading_halted() is False


def test_a_list_argument_is_one_parameter_whatever_its_length(db):
    from brokers.models import Position

    accounts = [paper_account(owner=UserFactory(), label=f"L{n}")[0] for n in range(3)]
    for n, account in enumerate(accounts):
        for symbol in ("AAA", "BBB"):
            Position.objects.create(account=account, symbol=symbol, side="long", qty=n + 1, avg_price=10)
    select = Precompiled(lambda ids, symbols: Position.objects.filter(account_id__any=ids, symbol__any=symbols)
                         .order_by("account_id", "symbol"), model=Position, arity=2, lists=(0, 1))

    def seen(rows):
        return [(p.account_id, p.symbol) for p in rows]

    one = select([accounts[0].pk], ["AAA"])
    assert seen(one) == [(accounts[0].pk, "AAA")]
    ids = [a.pk for a in accounts]
    assert seen(select(ids[1:], ["AAA", "BBB"])) == seen(
        Position.objects.filter(account_id__in=ids[1:]).order_by("account_id", "symbol"))
    assert seen(select([ids[2], ids[0]], ["BBB", "ZZZ"])) == [(ids[0], "BBB"), (ids[2], "BBB")]
    assert Position.objects.filter(account_id__any=ids, symbol__any=["AAA"]).count() == 3  # the lookup alone
    assert not Position.objects.filter(account_id__any=[]).exists()  # empty: no rows, as __in
