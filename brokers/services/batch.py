"""Run many first-attempt bot entries (one alert's subscribers) as one batch: the engine's steps done set-wise.

``execution_run`` spends about 25 database round trips on one subscriber's entry (claim, load, kill switch, plan
gate, risk lock and slot, order reservation, paper fill, booking, outcome, counters). A batch does each step for
all its executions at once, so a bot alert's 1,000 subscribers cost a few dozen statements per batch instead of
25,000 round trips. Nothing about exactly-once changes:

1. The claim takes only executions that are ``pending`` and were never attempted, row-locked with SKIP LOCKED, and
   moves them to ``running`` with a lease, as ``execution_claim`` does one by one.
2. Decisions are ``risk.services.entries_decide``: ``decide``'s checks in its order, and every user's risk lock
   held while the trade slots are reserved.
3. Every order row is inserted ``sending`` with its deterministic client id before any broker call (one INSERT).
4. Broker calls: the paper broker books its fills in one statement (``PaperAdapter.place_batch``); a network
   broker's calls run concurrently on threads, one per order (the SDKs are blocking; no database work happens on
   those threads).
5. Answers are recorded and fills booked in one transaction. An execution is finished only while this batch
   still holds it (status ``running``, first attempt), so an outcome is counted once.

Whatever the batch cannot settle goes to the one-by-one path (``execution_run_task``) with the same guarantees:
executions that are not plain entries (exits, options, other brokers, retries), a transient or ambiguous broker
answer (the order stays ``sending``: the task looks it up by client id, never resends), and everything still
running if the batch itself fails. A live entry's stop loss / take profit are placed right after the batch's main
orders are booked, concurrently; one that fails transiently is placed by the one-by-one path's resumed run.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone

from brokers.adapters import get_adapter
from brokers.adapters.base import (
    BrokerAdapter,
    BrokerAmbiguous,
    BrokerAuthError,
    BrokerError,
    BrokerRejected,
    BrokerTransient,
    OrderRequest,
    OrderResult,
)
from brokers.live import execution_event, publish_on_commit
from brokers.models import Broker, Execution, Order
from brokers.services.breakeven import positions_breakeven_record
from brokers.services.execution import (
    LEASE,
    ORDER_STATUS,
    _leg_cancelled,
    _leg_failure,
    _mark_login_needed,
    _record_latency,
    _request,
    _unpriced_entry_value,
    _unprotected,
    client_order_id,
    execution_reason,
    protection_levels,
)
from brokers.services.instruments import resolve_memo
from brokers.services.outcomes import OUTCOME, execution_log_outcome, execution_record_slippage
from brokers.services.planning import LegPlan, PlanRejected, plan_legs
from brokers.services.positions import Fill, positions_apply_fills
from tradeflow.fastinsert import insert_objects, update_many
from tradeflow.precompiled import Precompiled

log = logging.getLogger(__name__)
FINISH_FIELDS = ["status", "reason_code", "reason", "finished_at", "lease_until", "latency_ms", "slippage",
                 "slippage_bps"]


@dataclass
class BatchOutcome:
    finished: int = 0  # executions this batch brought to a final state
    single: list[int] = field(default_factory=list)  # for execution_run_task, one by one
    more: bool = False  # a drain took as many as it may: others may still be waiting


@dataclass
class _Item:
    execution: Execution
    adapter: BrokerAdapter
    legs: list[LegPlan]  # [main], or an options entry's [hedge, main]
    leg: LegPlan | None = None  # the leg being placed
    order: Order | None = None  # its order row
    done: list[str] = field(default_factory=list)  # legs filled so far


def drains(account, intent: dict) -> bool:
    """An account alert the webhook hands to ``executions_drain`` instead of its own one-by-one task: an entry in
    the unified or the options format on the paper broker (its fills are TradeFlow's own rows, so a batch of them
    costs a few statements). Live accounts' alerts go one by one: their time is the broker's round trip."""
    return account.is_paper and intent.get("action") == "entry" and intent.get("format") in ("unify.v1", "options")


def batchable(execution: Execution) -> bool:
    """A first attempt at an entry the batch engine runs: a bot subscriber's plain entry on the paper broker or
    Binance, or an account alert that ``drains``."""
    intent, account = execution.intent, execution.account
    if not (execution.kind == Execution.Kind.SIGNAL and execution.status == Execution.Status.PENDING
            and execution.attempts == 0 and intent.get("action") == "entry"):
        return False
    if execution.subscription_id is None:
        return drains(account, intent)
    return (intent.get("format") == "bot" and not intent.get("option")
            and (account.is_paper or account.broker == Broker.BINANCE)
            # A resumed run (SL/TP after a transient error) plans the entry again: only at the alert's own price.
            and (account.is_paper or bool(intent.get("price")) or not (intent.get("sl") or intent.get("tp"))))


def _rows(condition: Q):
    return Execution.objects.select_related("account", "account__owner", "account__owner__trading_settings",
                                            "signal").filter(condition).order_by()


WINDOW = 4  # a drain picks its alerts among the oldest WINDOW × its batch size waiting


def _waiting(execution_id: int, limit: int):
    """The oldest account alerts waiting for a worker, but ``execution_id``: up to ``limit`` - 1, taken among the
    oldest ``WINDOW`` × ``limit`` with those of an account another worker is running an execution on last. That
    worker holds the account's (and its user's) locks until it commits, so a second drain that took them would wait
    for it instead of working beside it: they are the next drain's, in their order. Nothing is left behind by this:
    a drain takes all that is waiting, or ``limit`` - 1 (and then sends another drain)."""
    waiting = Execution.objects.filter(
        status=Execution.Status.PENDING, attempts=0, kind=Execution.Kind.SIGNAL, subscription__isnull=True,
    ).exclude(pk=execution_id).order_by("pk")
    busy = Execution.objects.filter(account_id=OuterRef("account_id"), status=Execution.Status.RUNNING,
                                    lease_until__gt=Now())
    return (Execution.objects.filter(pk__in=waiting.values("pk")[:WINDOW * limit])
            .order_by(Exists(busy).asc(), "pk").values("pk")[:limit - 1])


_drain_selects: dict[int, Precompiled] = {}


def executions_run_batch(execution_ids: list[int]) -> BatchOutcome:
    """Run what it can of ``execution_ids`` as one batch; the outcome says which ids the caller must hand to the
    one-by-one task (``single``)."""
    candidates = [e for e in _rows(Q(pk__in=execution_ids)) if batchable(e)]
    wanted = {e.pk for e in candidates}
    return _claim_and_run(candidates, execution_ids, BatchOutcome(
        single=[pk for pk in execution_ids if pk not in wanted]))


def executions_drain(execution_id: int, *, limit: int | None = None) -> BatchOutcome:
    """Run account alert ``execution_id`` together with the other account alerts waiting for a worker right now
    (oldest first, up to ``WEBHOOK_BATCH_SIZE`` in all): adaptive batching. Alone, it is a batch of one; under a
    burst, each drain takes what queued behind the busy workers, so a worker's cost per alert falls as the load
    rises instead of the queue growing. Every drained execution's own message is still on its way: finding its
    execution taken (running or finished), that drain runs whatever else is waiting, or nothing."""
    limit = limit or settings.WEBHOOK_BATCH_SIZE
    # Its own and the oldest waiting (the partial index execution_waiting_alert); on PostgreSQL in one statement,
    # compiled once per process.
    if limit <= 1:
        found = list(_rows(Q(pk=execution_id)))
    elif connection.vendor == "postgresql":
        select = _drain_selects.get(limit)
        if select is None:
            select = _drain_selects[limit] = Precompiled(
                lambda own: _rows(Q(pk__in=Execution.objects.filter(pk=own).values("pk").union(
                    _waiting(own, limit), all=True))), model=Execution, arity=1)
        found = select(execution_id)
    else:  # SQLite takes no ORDER BY … LIMIT inside a UNION
        found = list(_rows(Q(pk__in=[execution_id, *(row["pk"] for row in _waiting(execution_id, limit))])))
    rows = sorted(found, key=lambda e: (e.pk != execution_id, e.pk))
    candidates = [e for e in rows if batchable(e)]
    own = next((e for e in rows if e.pk == execution_id), None)
    outcome = BatchOutcome(more=limit > 1 and len(rows) - (own is not None) == limit - 1)
    if own is not None and own.status == Execution.Status.PENDING and own not in candidates:
        outcome.single.append(execution_id)  # e.g. its account went live meanwhile: the one-by-one path runs it
    return _claim_and_run(candidates, [execution_id], outcome)


def _claim_and_run(candidates: list[Execution], requested: list[int], outcome: BatchOutcome) -> BatchOutcome:
    claimed = _claim(candidates)
    # A requested execution another worker holds is that worker's to finish (the sweeper resumes it should that
    # worker die). Only one still pending (skipped while locked for a moment) goes on one by one: its message is
    # this one.
    if missed := [e.pk for e in candidates if e.pk in requested and e.pk not in claimed]:
        outcome.single += list(Execution.objects.filter(pk__in=missed, status=Execution.Status.PENDING)
                               .values_list("pk", flat=True))
    if not claimed:
        return outcome
    try:
        _run(list(claimed.values()), outcome)
    except Exception:
        # A bug or an outage of our own: nothing is lost. What this batch still holds goes back to the queue for
        # the one-by-one path, which finds any order already reserved (and asks the broker, never resends).
        log.exception("batch of %d executions failed; handing them to the one-by-one path", len(claimed))
        held = list(Execution.objects.filter(pk__in=list(claimed), status=Execution.Status.RUNNING, attempts=1)
                    .values_list("pk", flat=True))
        Execution.objects.filter(pk__in=held, status=Execution.Status.RUNNING).update(
            status=Execution.Status.PENDING, lease_until=None)
        outcome.single += [pk for pk in held if pk not in outcome.single]
    return outcome


def _claim(executions: list[Execution]) -> dict[int, Execution]:
    """``execution_claim`` for many: the pending, never-attempted ones that no one else is claiming right now."""
    if not executions:
        return {}
    now = timezone.now()
    lease = now + LEASE
    if connection.vendor == "postgresql":
        # One statement in autocommit (no BEGIN/COMMIT round trips): lock what is free, move it to running, say which.
        table = Execution._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET status = %s, lease_until = %s, attempts = 1, started_at = %s "  # noqa: S608
                f"WHERE id IN (SELECT id FROM {table} WHERE id = ANY(%s) AND status = %s AND attempts = 0 "
                "FOR UPDATE SKIP LOCKED) RETURNING id",
                [Execution.Status.RUNNING, lease, now, [e.pk for e in executions], Execution.Status.PENDING])
            ids = {row[0] for row in cursor.fetchall()}
    else:
        with transaction.atomic():
            ids = set(Execution.objects.select_for_update(skip_locked=True).filter(
                pk__in=[e.pk for e in executions], status=Execution.Status.PENDING, attempts=0,
            ).values_list("pk", flat=True))
            Execution.objects.filter(pk__in=ids).update(status=Execution.Status.RUNNING, lease_until=lease,
                                                        attempts=1, started_at=now)
    claimed = {}
    for execution in executions:
        if execution.pk in ids:
            execution.status, execution.attempts = Execution.Status.RUNNING, 1
            execution.lease_until, execution.started_at = lease, now
            claimed[execution.pk] = execution
    return claimed


def _run(executions: list[Execution], outcome: BatchOutcome) -> None:
    """Decide, plan, reserve, place, record and finish. On the paper broker all of it is one transaction: its book is
    in this database, so the order rows, their fills and the positions commit together or not at all (a failure
    leaves the executions claimed and untouched, and the one-by-one path runs them from the start)."""
    paper = all(e.account.is_paper for e in executions)
    with transaction.atomic() if paper else nullcontext():
        _steps(executions, outcome)


def _steps(executions: list[Execution], outcome: BatchOutcome) -> None:
    from risk.services import entries_decide, planned_value_decide

    done: list[Execution] = []

    def finish(execution: Execution, status: str, code: str = "", reason: str = "") -> None:
        code, reason = execution_reason(execution, code, reason)
        execution.status, execution.reason_code, execution.reason = status, code, reason[:2000]
        done.append(execution)

    items: list[_Item] = []
    decisions = entries_decide(executions)
    with resolve_memo():  # the batch's options entries ask for the same few contracts
        for execution in executions:
            decision = decisions[execution.pk]
            if not decision.allowed:
                finish(execution, Execution.Status.REJECTED, decision.code, decision.message)
                continue
            adapter = get_adapter(execution.account)
            try:
                legs = plan_legs(execution, adapter=adapter)
            except PlanRejected as exc:
                finish(execution, Execution.Status.REJECTED, exc.code, exc.message)
                continue
            except (BrokerTransient, BrokerAmbiguous):  # the one-by-one path retries with backoff
                outcome.single.append(execution.pk)
                continue
            except BrokerError as exc:
                if isinstance(exc, BrokerAuthError):
                    _mark_login_needed(execution.account, exc)
                finish(execution, Execution.Status.FAILED, exc.code or "broker_rejected",
                       f"Could not prepare the order: {exc.message}")
                continue
            if [leg.leg for leg in legs] not in (["main"], ["hedge", "main"]) or (
                    len(legs) > 1 and not execution.account.is_paper):  # not a plain entry after all: one by one
                outcome.single.append(execution.pk)
                continue
            if (value := _unpriced_entry_value(execution, legs)) is not None:
                decision = planned_value_decide(execution=execution, value=value)
                if not decision.allowed:
                    finish(execution, Execution.Status.REJECTED, decision.code, decision.message)
                    continue
            items.append(_Item(execution, adapter, legs))
    _release(outcome.single)
    # Legs in plan order, a step for all at once: the hedges first, and a main leg only against a filled hedge.
    while items:
        for item in items:
            item.leg = item.legs[len(item.done)]
        _reserve(items)
        results = place_many([(item.adapter, _request(item.order, item.leg)) for item in items])
        items = _record(items, results, finish, outcome)
    _finish(done, outcome)


def _release(ids: list[int]) -> None:
    if ids:
        Execution.objects.filter(pk__in=ids, status=Execution.Status.RUNNING).update(
            status=Execution.Status.PENDING, lease_until=None)


def _reserve(items: list[_Item]) -> None:
    """Every item's order row for its current leg inserted ``sending`` in one statement: the durable mark that the
    broker may have it. These executions were never attempted, so no reservation exists yet (the unique key would
    stop the batch if one did: the one-by-one path then takes over)."""
    now = timezone.now()
    for item in items:
        execution, leg = item.execution, item.leg
        item.order = Order(execution=execution, leg=leg.leg, account=execution.account,
                           client_order_id=client_order_id(execution.pk, leg.leg), symbol=leg.symbol, side=leg.side,
                           order_type=leg.order_type, qty=leg.qty, price=leg.price, status=Order.Status.SENDING,
                           sent_at=now)
    insert_objects([[item.order for item in items]], savepoint=False)  # one statement: atomic by itself


def place_many(pairs: list[tuple[BrokerAdapter, OrderRequest]]) -> list[OrderResult | BrokerError]:
    """Each (adapter, request) placed; an error is returned in its place, so one failure never stops the others. An
    adapter class with ``place_batch`` takes its orders at once; the others are called concurrently on threads."""
    results: list[OrderResult | BrokerError | None] = [None] * len(pairs)
    by_class: dict[type, list[int]] = {}
    for n, (adapter, _) in enumerate(pairs):
        by_class.setdefault(type(adapter), []).append(n)
    for cls, indexes in by_class.items():
        if hasattr(cls, "place_batch"):
            for n, result in zip(indexes, cls.place_batch([pairs[n] for n in indexes]), strict=True):
                results[n] = result
            continue
        for n, result in zip(indexes, _concurrently(lambda n: _place_one(*pairs[n]), indexes), strict=True):
            results[n] = result
    return results


def _place_one(adapter: BrokerAdapter, request: OrderRequest) -> OrderResult | BrokerError:
    try:
        return adapter.place_order(request)
    except BrokerError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - an SDK bug: the order's fate is unknown, so it is looked up later
        log.exception("placing %s raised", request.client_order_id)
        return BrokerAmbiguous(f"{exc.__class__.__name__}: {exc}", code="internal_error")


def _record(items: list[_Item], results: list, finish, outcome: BatchOutcome) -> list[_Item]:
    """The brokers' answers onto the orders, and the fills into the positions, in one transaction. Returns the items
    with a leg still to place (a filled hedge's main leg)."""
    orders: list[Order] = []
    fills: list[Fill] = []
    protect: list[tuple[_Item, OrderResult, dict]] = []
    breakeven: list[Order] = []
    going_on: list[_Item] = []
    now = timezone.now()
    for item, result in zip(items, results, strict=True):
        execution, leg, order = item.execution, item.leg, item.order
        hedge_unsettled = leg.leg == "hedge" and isinstance(result, OrderResult) and result.status not in (
            "filled", "rejected")
        if isinstance(result, BrokerTransient | BrokerAmbiguous) or hedge_unsettled:
            # The order stays ``sending``: the one-by-one path looks it up by client id before anything else.
            # (A hedge still working is the one-by-one path's to cancel or wait for: the main leg waits on it.)
            log.warning("order %s: %s; the one-by-one path settles it", order.client_order_id,
                        getattr(result, "message", f"hedge {getattr(result, 'status', '')}"))
            outcome.single.append(execution.pk)
            continue
        if isinstance(result, BrokerError) or result.status == "rejected":
            error = result if isinstance(result, BrokerError) else BrokerRejected(
                result.reject_reason or "rejected by the broker", code="rejected", raw=result.raw)
            order.status, order.reject_reason, order.raw = Order.Status.REJECTED, error.message, error.raw or {}
            if isinstance(result, OrderResult):
                order.broker_order_id = result.broker_order_id or ""
            orders.append(order)
            auth = isinstance(error, BrokerAuthError)
            if auth:
                _mark_login_needed(execution.account, error)
            finish(execution, Execution.Status.FAILED, error.code or ("auth" if auth else "broker_rejected"),
                   _leg_failure(leg, error, item.done))
            continue
        status = ORDER_STATUS.get(result.status, Order.Status.OPEN)
        order.status, order.broker_order_id, order.raw = status, result.broker_order_id or "", result.raw or {}
        order.filled_qty, order.avg_price = result.filled_qty, result.avg_price
        order.reject_reason = result.reject_reason or ""
        order.filled_at = now if status == Order.Status.FILLED else None
        orders.append(order)
        if leg.leg == "hedge":  # filled (the others went on above): its main leg is next
            item.done.append(leg.leg)
            going_on.append(item)
            fills.append(Fill(account=order.account, symbol=order.symbol, side=order.side, qty=result.filled_qty,
                              price=result.avg_price, meta=leg.meta))
            continue
        _record_latency(execution)
        if status == Order.Status.CANCELLED:
            finish(execution, Execution.Status.FAILED, "order_cancelled", _leg_cancelled(leg, result, []))
        elif status == Order.Status.OPEN:  # resting at the broker: accepted, not filled
            finish(execution, Execution.Status.PLACED)
        else:
            execution_record_slippage(execution, side=leg.side, reference=leg.reference_price, fill=result.avg_price)
            # The levels go onto the position with the fill (the paper broker's stops are TradeFlow's own, watched by
            # the stop watcher); a broker that holds stop/target orders gets them right after this transaction.
            levels = protection_levels(leg, result)
            if levels and type(item.adapter).place_protection is not BrokerAdapter.place_protection:
                protect.append((item, result, levels))
            else:
                finish(execution, Execution.Status.FILLED)
            fills.append(Fill(account=order.account, symbol=order.symbol, side=order.side, qty=result.filled_qty,
                              price=result.avg_price, meta=leg.meta, levels=levels))
            if leg.meta.get("role") == "main":  # a filled options entry
                breakeven.append(order)
    with transaction.atomic(savepoint=False):
        update_many(orders, ["status", "broker_order_id", "filled_qty", "avg_price", "raw",
                                           "reject_reason", "filled_at"])
        if fills:
            positions_apply_fills(fills)
        positions_breakeven_record([(order.account, order.symbol) for order in breakeven])
    if protect:
        _protect(protect, finish, outcome)
    _release(outcome.single)
    return going_on


def _protect(protect: list[tuple[_Item, OrderResult, dict]], finish, outcome: BatchOutcome) -> None:
    """Every filled entry's stop loss / take profit placed at the broker, concurrently (``_protect`` one by one):
    a refusal keeps the fill and says the position is unprotected; a transient error leaves it to the one-by-one
    path, whose resumed run finds the main order filled and places them with the same ids."""
    def place(entry):
        item, result, levels = entry
        leg = item.leg
        try:
            item.adapter.place_protection(symbol=leg.symbol, entry_side=leg.side, qty=result.filled_qty,
                                          client_order_id=item.order.client_order_id,
                                          stop_loss=levels.get("stop_loss"), take_profit=levels.get("take_profit"),
                                          extra=leg.extra)
        except BrokerError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - an SDK bug: retried by the one-by-one path
            log.exception("protection for %s raised", item.order.client_order_id)
            return BrokerTransient(f"{exc.__class__.__name__}: {exc}", code="internal_error")
        return None

    for (item, _, _), error in zip(protect, _concurrently(place, protect), strict=True):
        execution = item.execution
        if error is None:
            finish(execution, Execution.Status.FILLED)
        elif isinstance(error, BrokerRejected | BrokerAuthError):
            log.warning("protection for %s refused: %s", item.order.client_order_id, error.message)
            if isinstance(error, BrokerAuthError):
                _mark_login_needed(execution.account, error)
            finish(execution, Execution.Status.FILLED, "unprotected",
                   _unprotected(execution, f"refused: {error.message}"))
        else:
            outcome.single.append(execution.pk)
    # Those left to the one-by-one path keep their main order's acknowledgement and slippage.
    retry = [item.execution for item, _, _ in protect if item.execution.pk in set(outcome.single)]
    update_many(retry, ["latency_ms", "slippage", "slippage_bps"])


_pools: dict[int, ThreadPoolExecutor] = {}


def _concurrently(fn, entries: list) -> list:
    """``fn`` over ``entries`` on this process's broker threads (blocking SDK calls; no database work on them),
    results in order. The threads live as long as the process, so each keeps its cache connection and its HTTP
    sessions' pools warm from one batch to the next (created after a prefork worker's fork, keyed by pid)."""
    if not entries:
        return []
    pool = _pools.get(os.getpid())
    if pool is None:
        pool = _pools[os.getpid()] = ThreadPoolExecutor(max_workers=max(1, settings.BATCH_BROKER_THREADS),
                                                        thread_name_prefix="batch-broker")
    return list(pool.map(fn, entries))


def _finish(executions: list[Execution], outcome: BatchOutcome) -> None:
    """Save the finished executions and move their signals' counters, in one transaction; only those this batch
    still holds (a lease that ran out may have let the one-by-one path finish one: its outcome stands)."""
    if not executions:
        return
    now = timezone.now()
    for execution in executions:
        execution.finished_at, execution.lease_until = now, None
    with transaction.atomic(savepoint=False):
        held = update_many(executions, FINISH_FIELDS, where={"status": Execution.Status.RUNNING, "attempts": 1})
        saved = [e for e in executions if e.pk in held]
        counts = Counter((e.signal_id, OUTCOME[e.status]) for e in saved if e.signal_id and e.subscription_id)
        by_signal: dict[str, dict] = {}
        for (signal_id, counter), n in counts.items():
            by_signal.setdefault(signal_id, {})[counter] = F(counter) + n
        from webhooks.models import Signal

        for signal_id, changes in by_signal.items():
            Signal.objects.filter(pk=signal_id).update(**changes)
        for execution in saved:
            if execution.signal_id and not execution.subscription_id:
                execution_log_outcome(execution)
    outcome.finished += len(saved)
    publish_on_commit([(e.account.owner_id, execution_event(e)) for e in saved])
