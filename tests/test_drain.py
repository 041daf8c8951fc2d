"""Account alerts' paper entries are drained in adaptive batches (``brokers.services.batch.executions_drain``): each
one's task also runs the alerts waiting behind it. The outcomes are the one-by-one engine's, every waiting alert is
taken once, and what a batch does not take (exits, live accounts) keeps its own task."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from brokers.adapters.paper import quote_set
from brokers.models import BrokerAccount, Execution, Order, PaperOrder, Position, Quote
from brokers.services.batch import executions_drain
from brokers.services.breakeven import position_breakeven_record
from brokers.tasks import execution_run_task, executions_drain_task
from risk.services import risk_config_update
from tests import factories
from webhooks.models import WebhookLog

D = Decimal
pytestmark = pytest.mark.django_db


def desk():
    """Five customers, each with a paper account and its webhook key."""
    accounts = []
    for n in range(5):
        user = factories.UserFactory(email=f"desk{n}@example.com")
        prefs = user.trading_settings
        prefs.hedge_pct, prefs.hedge_strike_offset = D("30"), 200
        prefs.save()
        accounts.append(factories.paper_account(owner=user, label=f"Desk {n}"))
    return accounts


def post(client, key: str, body: dict) -> int:
    response = client.post(f"/api/v1/webhooks/{key}", data=json.dumps(body), content_type="text/plain")
    assert response.status_code == 202, response.content
    return Execution.objects.get(signal_id=response.json()["signal_id"]).pk


def unify(side: str, symbol: str, qty: str, price: str | None = None, **extra) -> dict:
    intent = {"side": side, "symbol": symbol, "qty": qty, **extra}
    if price is not None:
        intent["price"] = price
    return {"version": "unify.v1", "intent": intent}


def alerts(client, accounts) -> list[int]:
    """A burst of alerts queued before any worker ran, each meeting a different path of the engine."""
    (a, ka), (b, kb), (c, kc), (d, kd), (e, ke) = accounts
    c.owner.trading_settings.auto_trade = False
    c.owner.trading_settings.save()
    risk_config_update(user=e.owner, max_position_value=D("500"))
    quote_set(broker="paper", symbol="NIFTY 25000 PE", price=D("120"))
    return [
        # Long 2 at 100 with a 2 % stop and a 2:1 target, then sold 5 at the last price (100): short 3.
        post(client, ka, unify("buy", "AAPL", "2", "100", sl={"mode": "pct", "value": 2},
                               tp={"mode": "rr", "value": 2})),
        post(client, ka, unify("sell", "AAPL", "5")),
        # Options entry: the 30 % hedge (3 lots of the 24800 PE, priced from the spot) bought, then 10 lots sold.
        post(client, kb, {"signal": "S1", "strike": 25000, "type": "PE", "action": "ENTRY", "lots": 10,
                          "spot_price": 24481}),
        post(client, kc, unify("buy", "MSFT", "1", "300")),  # auto-trade off: rejected
        post(client, kd, unify("buy", "NOQUOTE", "1")),  # no price anywhere: the paper broker refuses it
        post(client, ke, unify("buy", "TSLA", "10", "200")),  # 2,000 over the 500 limit: rejected
        post(client, kd, unify("buy", "AMZN", "3", "150")),
    ]


def state(accounts, ids):
    executions = []
    for pk in ids:
        e = Execution.objects.get(pk=pk)
        executions.append((e.status, e.reason_code, e.reason, e.attempts, e.latency_ms is not None,
                           sorted(Order.objects.filter(execution=e).values_list("leg", "side", "status", "qty",
                                                                               "avg_price")),
                           WebhookLog.objects.get(signal_id=e.signal_id).error))
    positions = sorted((p.account.label, p.symbol, p.side, p.qty, p.avg_price, p.stop_loss, p.take_profit,
                        p.status, p.meta.get("breakeven")) for p in Position.objects.select_related("account"))
    balances = sorted(BrokerAccount.objects.values_list("label", "balance"))
    return executions, positions, balances, PaperOrder.objects.count()


def test_a_drain_ends_every_alert_as_the_one_by_one_engine_does(client, django_capture_on_commit_callbacks):
    results = []
    for engine in ("one by one", "drained"):
        accounts = desk()
        with django_capture_on_commit_callbacks(execute=False) as queued:
            ids = alerts(client, accounts)
        assert len(queued) == len(ids)  # each alert's own task, sent once the signal is stored
        if engine == "one by one":
            for pk in ids:
                execution_run_task.apply(args=(pk,))
        else:
            with django_capture_on_commit_callbacks(execute=True):
                outcome = executions_drain(ids[3])  # any alert's task takes them all, its own first
            assert (outcome.finished, outcome.single) == (len(ids), [])
        results.append(state(accounts, ids))
        for model in (WebhookLog, Position, PaperOrder, Execution, BrokerAccount, Quote):
            model.objects.all().delete()
        User.objects.filter(email__startswith="desk").delete()
    one_by_one, drained = results
    assert drained == one_by_one

    executions, positions, balances, paper_orders = drained
    assert [(e[0], e[1]) for e in executions] == [
        ("filled", ""), ("filled", ""), ("filled", ""), ("rejected", "auto_trade_off"),
        ("failed", "no_price"), ("rejected", "max_position_value"), ("filled", "")]
    assert executions[3][6].startswith("Rejected: Auto-trade is off")  # the 202's log row says what happened
    assert executions[4][6].startswith("Failed: ") and "No price known for NOQUOTE" in executions[4][6]
    # The hedge had no quote: the paper broker's estimate from the spot (in the money at spot 24481).
    assert executions[2][5] == [("hedge", "buy", "filled", D("195"), D("402.10")),
                                ("main", "sell", "filled", D("650"), D("120"))]
    assert ("Desk 0", "AAPL", "short", D("3"), D("100"), None, None, "open", None) in positions
    assert ("Desk 0", "AAPL", "long", D("2"), D("100"), D("98"), D("104"), "closed", None) in positions
    main = next(p for p in positions if p[1] == "NIFTY 25000 PE")
    assert main[2:5] == ("short", D("650"), D("120")) and main[8] == "25000.63"  # 25000 − (120 − 402.10 × 195/650)
    assert paper_orders == 5  # the refused one never reached the book


def test_the_other_alerts_tasks_find_their_execution_taken_and_nothing_is_placed_twice(
        client, settings, django_capture_on_commit_callbacks):
    settings.WEBHOOK_BATCH_SIZE = 3
    (_, key), *_ = desk()
    with django_capture_on_commit_callbacks(execute=False):
        ids = [post(client, key, unify("buy", "AAPL", "1", str(100 + n))) for n in range(7)]

    first = executions_drain_task.apply(args=(ids[5],)).get()  # its own, then the two oldest waiting
    assert first == 3
    assert {pk for pk in ids if Execution.objects.get(pk=pk).status == "filled"} == {ids[5], ids[0], ids[1]}
    done = [executions_drain_task.apply(args=(pk,)).get() for pk in ids]  # every alert's own message, in turn
    # A drain whose own alert was taken still runs what is waiting: ids[0]'s takes ids[2..3], ids[1]'s the rest.
    assert done == [2, 2, 0, 0, 0, 0, 0]
    assert PaperOrder.objects.count() == 7 and Order.objects.count() == 7
    assert set(Execution.objects.values_list("status", "attempts")) == {("filled", 1)}
    position = Position.objects.get(status="open")
    assert (position.qty, position.avg_price) == (D("7"), D("103"))  # 100 … 106, each fill once


def test_a_drain_leaves_exits_and_live_accounts_to_their_own_tasks(client, django_capture_on_commit_callbacks):
    (_, key), *_ = desk()
    owner = factories.UserFactory(email="live@example.com")
    live = factories.binance_account(owner=owner, api_key="k" * 64, api_secret="s" * 64)
    with django_capture_on_commit_callbacks(execute=True):
        post(client, key, unify("buy", "AAPL", "2", "100"))
    with django_capture_on_commit_callbacks(execute=False) as queued:
        close = post(client, key, {"version": "unify.v1", "intent": {"side": "close", "symbol": "AAPL"}})
        entry = post(client, key, unify("buy", "MSFT", "1", "300"))
    waiting_live = Execution.objects.create(account=live, kind=Execution.Kind.SIGNAL, intent={
        "format": "unify.v1", "action": "entry", "side": "buy", "symbol": "BTCUSDT", "qty": "1"})
    assert len(queued) == 2  # each alert's own task

    outcome = executions_drain(entry)

    assert (outcome.finished, outcome.single) == (1, [])
    assert Execution.objects.get(pk=entry).status == "filled"
    assert Execution.objects.get(pk=close).status == "pending"  # its own execution_run_task closes it
    assert Execution.objects.get(pk=waiting_live.pk).status == "pending"
    execution_run_task.apply(args=(close,))
    assert Execution.objects.get(pk=close).status == "filled"
    assert not Position.objects.filter(symbol="AAPL", status="open").exists()


def test_a_drain_costs_a_fixed_number_of_statements_not_one_set_per_alert(client, settings,
                                                                          django_capture_on_commit_callbacks):
    settings.WEBHOOK_BATCH_SIZE = 100
    accounts = desk()
    costs = {}
    for crowd in (2, 30):
        with django_capture_on_commit_callbacks(execute=False):
            ids = [post(client, accounts[n % 5][1], unify("buy", f"S{crowd}X{n}", "1", "10")) for n in range(crowd)]
        with CaptureQueriesContext(connection) as queries:
            outcome = executions_drain(ids[0])
        assert (outcome.finished, outcome.single) == (crowd, [])
        costs[crowd] = len(queries)
    # One by one an entry is about 14 statements (392 more for 28 more); a batch does each step once for all.
    assert costs[30] - costs[2] <= 5, costs
    assert PaperOrder.objects.count() == 32


def test_options_entries_cost_a_drain_no_statements_per_alert_and_each_gets_its_breakeven(
        client, settings, django_capture_on_commit_callbacks):
    settings.WEBHOOK_BATCH_SIZE = 100
    accounts = desk()
    costs = {}
    for crowd, first_strike in ((2, 20000), (20, 30000)):
        with django_capture_on_commit_callbacks(execute=False):
            ids = [post(client, accounts[n % 5][1], {
                "signal": "S1", "strike": first_strike + 100 * n, "type": "PE", "action": "ENTRY", "lots": 10,
                "spot_price": first_strike + 100 * n + 300}) for n in range(crowd)]
        with CaptureQueriesContext(connection) as queries:
            outcome = executions_drain(ids[0])
        assert (outcome.finished, outcome.single) == (crowd, [])
        costs[crowd] = len(queries)
    # The contracts' expiry, the hedges' and the main legs' fills and the breakevens: each once for the batch.
    assert costs[20] - costs[2] <= 2, costs
    mains = Position.objects.filter(meta__role="main").select_related("account")
    assert mains.count() == 22 and Position.objects.filter(meta__role="hedge").count() == 22
    for main in mains:  # what the one-by-one path computes for the same open legs
        stored = main.meta["breakeven"]
        assert D(stored) == position_breakeven_record(account=main.account, symbol=main.symbol).quantize(D("0.0001"))
        hedge = Position.objects.get(account=main.account, symbol=main.meta["hedge_symbol"])
        credit = main.avg_price - hedge.avg_price * hedge.qty / main.qty
        assert D(stored) == (D(main.meta["strike"]) - credit).quantize(D("0.0001")), main.symbol


def test_a_drain_leaves_the_alerts_of_an_account_another_worker_is_running_to_that_worker(
        client, settings, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    (_, busy_key), (_, key), *_ = desk()
    with django_capture_on_commit_callbacks(execute=False):
        running = post(client, busy_key, unify("buy", "AAPL", "1", "100"))
        busy = [post(client, busy_key, unify("buy", "AAPL", "1", str(101 + n))) for n in range(2)]
        free = [post(client, key, unify("buy", "MSFT", "1", str(300 + n))) for n in range(3)]
    # Another worker holds the first alert of the busy account (and, until it commits, that account's locks).
    Execution.objects.filter(pk=running).update(status="running", attempts=1,
                                                lease_until=timezone.now() + timedelta(minutes=5))

    outcome = executions_drain(free[0], limit=3)  # its own and two waiting: the free account's, not the older busy
    assert (outcome.finished, outcome.more) == (3, True)
    assert set(Execution.objects.filter(status="filled").values_list("pk", flat=True)) == set(free)
    # Nothing is left behind: with only the busy account's alerts waiting, a drain takes them, oldest first.
    outcome = executions_drain(0, limit=2)
    assert (outcome.finished, outcome.more) == (1, True)
    assert Execution.objects.get(pk=busy[0]).status == "filled"
    # A lease that ran out (the worker died) does not make an account busy.
    Execution.objects.filter(pk=running).update(lease_until=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=False):
        late = post(client, key, unify("buy", "MSFT", "1", "310"))
    assert executions_drain(late, limit=2).finished == 2
    assert Execution.objects.get(pk=busy[1]).status == "filled"


def test_a_drain_says_when_it_took_all_it_may_so_the_rest_gets_another(client, settings,
                                                                       django_capture_on_commit_callbacks):
    (_, key), *_ = desk()
    with django_capture_on_commit_callbacks(execute=False):
        ids = [post(client, key, unify("buy", "AAPL", "1", "100"))]
        ids += [post(client, key, unify("buy", "AAPL", "1", str(101 + n))) for n in range(4)]
    assert executions_drain(ids[0], limit=3).more is True  # its own and 2 of the 4 waiting: more may wait
    assert executions_drain(0, limit=3).more is True  # a follow-up takes the last two: as many as it may
    last = executions_drain(0, limit=3)
    assert (last.finished, last.more) == (0, False)  # nothing left: the chain ends
    settings.WEBHOOK_BATCH_SIZE = 1
    with django_capture_on_commit_callbacks(execute=False):
        alone = post(client, key, unify("buy", "AAPL", "1", "99"))
    outcome = executions_drain(alone)
    assert (outcome.finished, outcome.more) == (1, False)  # batches of one never send follow-ups
    assert Execution.objects.filter(status="filled").count() == 6
