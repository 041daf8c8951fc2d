"""Run one execution exactly once: decide, plan the legs, reserve each order, place it, book the fill.

Exactly-once rests on three things:

1. ``execution_claim`` moves the execution to ``running`` with a lease in one conditional UPDATE, so two
   workers never run it at once; a crashed worker's lease expires and a redelivery resumes it.
2. Each leg is an ``Order`` row reserved (unique on execution + leg) *before* the broker call, with a
   client order id derived from the execution id and leg: every attempt sends the same id.
3. An order found in ``sending`` state (a previous attempt may have reached the broker), or an ambiguous
   broker answer, is resolved by looking the order up by client id, never by resending blindly.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
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
from brokers.calc import sl_tp_prices
from brokers.models import BrokerAccount, Execution, Order, Position
from brokers.services.planning import LegPlan, PlanRejected, plan_legs
from brokers.services.positions import position_apply_fill

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30)
LEG_CODES = {"main": "M", "hedge": "H", "exit_main": "X", "exit_hedge": "Y", "close": "C"}


def client_order_id(execution_id: int, leg: str) -> str:
    """Deterministic and broker-safe: Kite tags allow 20 alphanumerics, Binance 36 of [.A-Za-z0-9:/_-]."""
    return f"{settings.ORDER_ID_PREFIX}{execution_id}{LEG_CODES[leg]}"


def execution_create_for_signal(*, signal, account: BrokerAccount) -> Execution:
    return Execution.objects.create(signal=signal, account=account, kind=Execution.Kind.SIGNAL, intent=signal.intent)


def execution_create_close(*, position: Position, actor=None) -> Execution:
    """A manual close of one position, run by the same engine as signals."""
    from brokers.tasks import execution_run_task
    from tradeflow.queue import enqueue

    with transaction.atomic():
        execution = Execution.objects.create(
            account=position.account, kind=Execution.Kind.CLOSE,
            intent={"format": "manual", "action": "exit", "symbol": position.symbol, "position_id": position.pk,
                    "actor_id": getattr(actor, "pk", None)},
        )
        enqueue(execution_run_task, execution.pk)
    return execution


def execution_claim(execution_id: int) -> bool:
    now = timezone.now()
    return bool(
        Execution.objects.filter(pk=execution_id)
        .filter(Q(status=Execution.Status.PENDING) | Q(status=Execution.Status.RUNNING, lease_until__lt=now))
        .update(status=Execution.Status.RUNNING, lease_until=now + LEASE, attempts=F("attempts") + 1,
                started_at=Coalesce(F("started_at"), now))
    )


def _finish(execution: Execution, status: str, *, code: str = "", reason: str = "") -> Execution:
    execution.status, execution.reason_code, execution.reason = status, code, reason[:2000]
    execution.finished_at, execution.lease_until = timezone.now(), None
    execution.save(update_fields=["status", "reason_code", "reason", "finished_at", "lease_until", "latency_ms"])
    from brokers.live import publish_execution

    publish_execution(execution)
    return execution


def execution_release(*, execution_id: int) -> None:
    """Give a running execution back to the queue (transient error; the task retries it)."""
    Execution.objects.filter(pk=execution_id, status=Execution.Status.RUNNING).update(
        status=Execution.Status.PENDING, lease_until=None)


def execution_fail(*, execution_id: int, error: BrokerError) -> Execution:
    """Retries exhausted (or too late to trade): record the last error, and say if an order is in doubt."""
    execution = Execution.objects.get(pk=execution_id)
    if execution.status in Execution.TERMINAL:
        return execution
    in_doubt = execution.orders.filter(status=Order.Status.SENDING).values_list("client_order_id", flat=True)
    if in_doubt:
        reason = (f"Order status unknown after retries ({error.message}). TradeFlow will not resend it: check "
                  f"your broker for client id {', '.join(in_doubt)}")
    elif error.code == "internal_error":
        reason = f"TradeFlow could not complete this execution: {error.message}"
    else:
        reason = f"Broker did not accept the order: {error.message}"
    return _finish(execution, Execution.Status.FAILED, code=error.code or "broker_unavailable", reason=reason)


def execution_run(*, execution_id: int) -> Execution:
    """Run (or resume) one execution. Safe to call any number of times."""
    if not execution_claim(execution_id):
        return Execution.objects.get(pk=execution_id)
    execution = Execution.objects.select_related("account", "account__owner", "signal").get(pk=execution_id)
    from risk.services import decide

    decision = decide(execution=execution)
    if not decision.allowed:
        return _finish(execution, Execution.Status.REJECTED, code=decision.code, reason=decision.message)
    try:
        legs = plan_legs(execution)
    except PlanRejected as exc:
        return _finish(execution, Execution.Status.REJECTED, code=exc.code, reason=exc.message)
    adapter = get_adapter(execution.account)
    done: list[str] = []
    resting = False
    for leg in legs:
        order = _reserve(execution, leg)
        try:
            result = _submit(adapter, order, leg)
        except BrokerAuthError as exc:
            _mark_login_needed(execution.account, exc)
            return _finish(execution, Execution.Status.FAILED, code=exc.code or "auth",
                           reason=_leg_failure(leg, exc, done))
        except BrokerRejected as exc:
            return _finish(execution, Execution.Status.FAILED, code=exc.code or "broker_rejected",
                           reason=_leg_failure(leg, exc, done))
        except (BrokerTransient, BrokerAmbiguous):
            execution_release(execution_id=execution.pk)
            raise
        if leg.leg in ("main", "close", "exit_main"):
            _record_latency(execution)
        if result.status == "filled" and leg.leg == "main" and leg.sl_tp:
            _attach_sl_tp(execution.account, leg, result)
        done.append(leg.leg)
        resting = resting or result.status == "open"
    # A limit order resting at the broker is accepted but not filled: say so rather than "filled".
    return _finish(execution, Execution.Status.PLACED if resting else Execution.Status.FILLED)


def _leg_failure(leg: LegPlan, exc: BrokerError, done: list[str]) -> str:
    text = f"{leg.leg.replace('_', ' ').capitalize()} order ({leg.side} {leg.qty} {leg.symbol}) failed: {exc.message}"
    if done:
        text += f". Already filled: {', '.join(done)}; check the open positions."
    return text


def _mark_login_needed(account: BrokerAccount, exc: BrokerError) -> None:
    BrokerAccount.objects.filter(pk=account.pk).update(
        status=BrokerAccount.Status.LOGIN_NEEDED, status_message=f"Broker login needed: {exc.message}"[:300])


def _record_latency(execution: Execution) -> None:
    if execution.signal_id and execution.latency_ms is None:
        delta = timezone.now() - execution.signal.received_at
        execution.latency_ms = Decimal(delta.total_seconds() * 1000).quantize(Decimal("0.01"))


def _reserve(execution: Execution, leg: LegPlan) -> Order:
    order, _ = Order.objects.get_or_create(
        execution=execution, leg=leg.leg,
        defaults={"account": execution.account, "client_order_id": client_order_id(execution.pk, leg.leg),
                  "symbol": leg.symbol, "side": leg.side, "order_type": leg.order_type, "qty": leg.qty,
                  "price": leg.price},
    )
    return order


def _request(order: Order, leg: LegPlan) -> OrderRequest:
    return OrderRequest(client_order_id=order.client_order_id, symbol=order.symbol, side=order.side, qty=order.qty,
                        order_type=order.order_type, price=order.price, reference_price=leg.reference_price,
                        reduce_only=leg.reduce_only, extra=leg.extra)


def _submit(adapter: BrokerAdapter, order: Order, leg: LegPlan) -> OrderResult:
    if order.status in (Order.Status.FILLED, Order.Status.OPEN):
        return OrderResult(broker_order_id=order.broker_order_id, status=order.status,
                           filled_qty=order.filled_qty, avg_price=order.avg_price)
    if order.status in (Order.Status.REJECTED, Order.Status.FAILED):
        raise BrokerRejected(order.reject_reason, code="rejected")
    if order.status == Order.Status.SENDING:
        found = adapter.order_status(client_order_id=order.client_order_id, symbol=order.symbol)
        if found is not None:
            return _record(order, found, leg)
    Order.objects.filter(pk=order.pk).update(status=Order.Status.SENDING, sent_at=timezone.now())
    try:
        result = adapter.place_order(_request(order, leg))
    except BrokerAmbiguous as exc:
        log.warning("ambiguous answer for order %s: %s; looking it up", order.client_order_id, exc.message)
        found = adapter.order_status(client_order_id=order.client_order_id, symbol=order.symbol)
        if found is None:
            raise
        result = found
    except BrokerRejected as exc:
        Order.objects.filter(pk=order.pk).update(status=Order.Status.REJECTED, reject_reason=exc.message,
                                                 raw=exc.raw)
        raise
    return _record(order, result, leg)


def _record(order: Order, result: OrderResult, leg: LegPlan) -> OrderResult:
    """Store the broker's answer and book the fill into the position, exactly once per order."""
    if result.status == "rejected":
        # Outside the fill's transaction: raising inside it would roll the rejection back.
        Order.objects.filter(pk=order.pk).update(status=Order.Status.REJECTED, reject_reason=result.reject_reason,
                                                 broker_order_id=result.broker_order_id, raw=result.raw)
        raise BrokerRejected(result.reject_reason or "rejected by the broker", code="rejected", raw=result.raw)
    status = Order.Status.FILLED if result.status == "filled" else Order.Status.OPEN
    with transaction.atomic():
        changed = Order.objects.filter(pk=order.pk).exclude(status=Order.Status.FILLED).update(
            status=status, broker_order_id=result.broker_order_id, filled_qty=result.filled_qty,
            avg_price=result.avg_price, raw=result.raw,
            filled_at=timezone.now() if status == Order.Status.FILLED else None,
        )
        if changed and status == Order.Status.FILLED:
            position_apply_fill(account=order.account, symbol=order.symbol, side=order.side, qty=result.filled_qty,
                                price=result.avg_price, meta=leg.meta)
    return result


def _attach_sl_tp(account: BrokerAccount, leg: LegPlan, result: OrderResult) -> None:
    sl, tp = leg.sl_tp
    sl_price, tp_price = sl_tp_prices(side=leg.side, entry=result.avg_price, sl=sl, tp=tp)
    # A later entry without SL/TP keeps the levels the position already has.
    levels = {k: v for k, v in (("stop_loss", sl_price), ("take_profit", tp_price)) if v is not None}
    if levels:
        Position.objects.filter(account=account, symbol=leg.symbol, status=Position.Status.OPEN).update(**levels)


