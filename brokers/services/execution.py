"""Run one execution exactly once: decide, plan the legs, reserve each order, place it, book the fill.

Exactly-once rests on three things:

1. ``execution_claim`` moves the execution to ``running`` with a lease in one conditional UPDATE, so two
   workers never run it at once; a crashed worker's lease expires and a redelivery resumes it.
2. Each leg is an ``Order`` row reserved (unique on execution + leg) *before* the broker call, with a
   client order id derived from the execution id and leg: every attempt sends the same id.
3. An order found in ``sending`` state (a previous attempt may have reached the broker), or an ambiguous
   broker answer, is resolved by looking the order up by client id, never by resending blindly.

Legs go in plan order, and a leg that protects the next one must fill first: a hedge still working after the
broker's fill wait is cancelled and the main leg is not placed; an exit whose main leg has not filled keeps the
hedge. After a filled entry its stop loss / take profit are placed at the broker (same ids on every attempt);
a refusal keeps the fill and says the position is unprotected.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
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
from brokers.calc import round_to_tick, sl_tp_prices
from brokers.models import BrokerAccount, Execution, Order, Position, Quote
from brokers.services.breakeven import position_breakeven_record
from brokers.services.closed_outside import book_closed_outside
from brokers.services.outcomes import execution_record_slippage, execution_save_outcome
from brokers.services.planning import LegPlan, PlanRejected, plan_legs
from brokers.services.positions import position_apply_fill
from tradeflow.fastinsert import savepoint_if_nested

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30)
LEG_CODES = {"main": "M", "hedge": "H", "exit_main": "X", "exit_hedge": "Y", "close": "C"}


def client_order_id(execution_id: int, leg: str) -> str:
    """Deterministic and broker-safe: Kite tags allow 20 alphanumerics, Binance 36 of [.A-Za-z0-9:/_-]."""
    # A bot's close_all closes several positions in one execution: legs close_1, close_2… → C1, C2…
    code = LEG_CODES.get(leg) or f"C{int(leg.removeprefix('close_'))}"
    return f"{settings.ORDER_ID_PREFIX}{execution_id}{code}"


def execution_create_for_signal(*, signal, account: BrokerAccount) -> Execution:
    return Execution.objects.create(signal=signal, account=account, kind=Execution.Kind.SIGNAL, intent=signal.intent)


# A close in one of these states may still trade: a second close of the same position must wait for it.
CLOSE_IN_FLIGHT = (Execution.Status.PENDING, Execution.Status.RUNNING, Execution.Status.PLACED)


def close_in_flight(position: Position) -> Execution | None:
    """The close of ``position`` that is pending, running or resting at the broker, if any."""
    return Execution.objects.filter(account_id=position.account_id, kind=Execution.Kind.CLOSE,
                                    status__in=CLOSE_IN_FLIGHT, intent__position_id=position.pk).first()


def execution_create_close(*, position: Position, actor=None, why: str = "", trigger: str = "",
                           with_hedge: bool = False) -> Execution:
    """A close of one position (manual, or the stop watcher's), run by the same engine as signals.

    At most one per position at a time: while a close of it is pending, running or resting at the broker, that
    one is returned and nothing new is created (the position row is locked while checking, so two callers at
    once cannot both create one). ``with_hedge`` closes an options main leg like an EXIT signal: main leg first,
    then its hedge. ``why`` (what triggered it) opens the execution's reason, whatever happens next.
    """
    from brokers.tasks import execution_run_task
    from tradeflow.queue import enqueue

    with transaction.atomic():
        Position.objects.select_for_update().filter(pk=position.pk).first()
        existing = close_in_flight(position)
        if existing is not None:
            return existing
        intent = {"format": "manual", "action": "exit", "symbol": position.symbol, "position_id": position.pk,
                  "actor_id": getattr(actor, "pk", None)}
        if with_hedge:
            meta = position.meta or {}
            intent |= {"format": "options",
                       "option": {k: meta.get(k) for k in ("underlying", "strike", "option_type")}}
        if why:
            intent |= {"why": why, "trigger": trigger}
        execution = Execution.objects.create(account=position.account, kind=Execution.Kind.CLOSE, intent=intent)
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


def execution_reason(execution: Execution, code: str, reason: str) -> tuple[str, str]:
    """A close started by the stop watcher keeps what triggered it in front of whatever happened next."""
    why = execution.intent.get("why")
    if not why:
        return code, reason
    return code or execution.intent.get("trigger", ""), f"{why}. {reason}" if reason else why


def _finish(execution: Execution, status: str, *, code: str = "", reason: str = "") -> Execution:
    code, reason = execution_reason(execution, code, reason)
    execution.status, execution.reason_code, execution.reason = status, code, reason[:2000]
    execution.finished_at, execution.lease_until = timezone.now(), None
    execution_save_outcome(execution, ["status", "reason_code", "reason", "finished_at", "lease_until", "latency_ms",
                                       "slippage", "slippage_bps"])
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
    orders = list(execution.orders.values_list("leg", "status", "client_order_id"))
    in_doubt = [cid for _, status, cid in orders if status == Order.Status.SENDING]
    protecting = (execution.intent.get("sl") or execution.intent.get("tp")) and "main" in {leg for leg, _, _ in orders}
    if in_doubt:
        reason = (f"Order status unknown after retries ({error.message}). TradeFlow will not resend it: check "
                  f"your broker for client id {', '.join(in_doubt)}")
    elif protecting and error.code != "internal_error" and all(s == Order.Status.FILLED for _, s, _ in orders):
        # Every order filled: what kept failing after them is placing the stop loss / take profit.
        return _finish(execution, Execution.Status.FILLED, code="unprotected",
                       reason=_unprotected(execution, f"not placed after retries ({error.message})"))
    elif error.code == "internal_error":
        reason = f"TradeFlow could not complete this execution: {error.message}"
    else:
        reason = f"Broker did not accept the order: {error.message}"
    return _finish(execution, Execution.Status.FAILED, code=error.code or "broker_unavailable", reason=reason)


def execution_run(*, execution_id: int) -> Execution:
    """Run (or resume) one execution. Safe to call any number of times."""
    if not execution_claim(execution_id):
        return Execution.objects.get(pk=execution_id)
    execution = Execution.objects.select_related(
        "account", "account__owner", "account__owner__trading_settings", "signal").get(pk=execution_id)
    from risk.services import decide

    if not _protection_pending(execution):  # a resumed entry whose main order filled was already admitted
        decision = decide(execution=execution)
        if not decision.allowed:
            return _finish(execution, Execution.Status.REJECTED, code=decision.code, reason=decision.message)
    adapter = get_adapter(execution.account)
    try:
        legs = plan_legs(execution, adapter=adapter)
    except PlanRejected as exc:
        return _finish(execution, Execution.Status.REJECTED, code=exc.code, reason=exc.message)
    except BrokerError as exc:  # a question the plan asked the broker (exchange filters, a last price)
        return _broker_failure(execution, exc, f"Could not prepare the order: {exc.message}")
    if (value := _unpriced_entry_value(execution, legs)) is not None:
        from risk.services import planned_value_decide

        decision = planned_value_decide(execution=execution, value=value)
        if not decision.allowed:
            return _finish(execution, Execution.Status.REJECTED, code=decision.code, reason=decision.message)
    return _place_legs(execution, adapter, legs)


def _unpriced_entry_value(execution: Execution, legs: list[LegPlan]) -> Decimal | None:
    """The planned main order's value, for an entry signal whose alert carried no qty × price (the risk check of
    the alert could not see it), on its first run; None when there is nothing to check."""
    from risk.rules import intent_value, is_exit

    config = getattr(execution, "risk_config", None)  # set by the risk admission of this run's entry
    if (config is None or not config.enabled or config.max_position_value is None or execution.attempts != 1
            or is_exit(execution.intent) or intent_value(execution.intent) is not None):
        return None
    main = next((leg for leg in legs if leg.leg == "main"), None)
    if main is None:
        return None
    # The price the order is sized at, else the last known quote (a market order of an alert without a price).
    price = main.price or main.reference_price or Quote.objects.filter(
        broker=execution.account.broker, symbol=main.symbol).values_list("price", flat=True).first()
    return main.qty * price if price else None


def _place_legs(execution: Execution, adapter: BrokerAdapter, legs: list[LegPlan]) -> Execution:
    done: list[str] = []
    resting = False
    warning = ""
    outside: list[str] = []  # closes the broker had nothing left for (closed in its own app)
    for n, leg in enumerate(legs):
        order = _reserve(execution, leg)
        try:
            try:
                result = _submit(adapter, order, leg)
            except BrokerRejected as exc:
                if exc.code != "not_held" or not leg.reduce_only:
                    raise
                outside.append(book_closed_outside(execution, leg, leg.qty, exc.message, adapter))
                done.append(leg.leg)
                continue
            if leg.reduce_only and (result.raw or {}).get("not_held_qty"):
                outside.append(book_closed_outside(execution, leg, Decimal(result.raw["not_held_qty"]),
                                                   f"{leg.symbol}: the broker held less than TradeFlow's books",
                                                   adapter))
            gate = ""
            if leg.leg == "hedge" and result.status == "open":
                result, gate = _cancel_unfilled_hedge(adapter, order, leg)
            if result.status == "filled" and leg.leg == "main":
                execution_record_slippage(execution, side=leg.side, reference=leg.reference_price,
                                          fill=result.avg_price)
                if leg.sl_tp and _defer_protection(execution, leg):
                    return _protection_deferred(execution)
                if leg.sl_tp:
                    warning = _protect(execution, adapter, order, leg, result)
        except BrokerError as exc:
            return _broker_failure(execution, exc, _leg_failure(leg, exc, done))
        if leg.leg in ("main", "close", "exit_main") or leg.leg.startswith("close_"):
            _record_latency(execution)
        if leg.leg == "hedge" and result.status != "filled":
            # The main leg is sold only against a bought hedge (seeds 000/001): never unhedged.
            return _finish(execution, Execution.Status.FAILED, code="hedge_not_filled",
                           reason=_hedge_unfilled(adapter, leg, result, legs[n + 1:], gate))
        if result.status == "cancelled":
            return _finish(execution, Execution.Status.FAILED, code="order_cancelled",
                           reason=_leg_cancelled(leg, result, done))
        done.append(leg.leg)
        if result.status == "open" and leg.leg == "exit_main" and n + 1 < len(legs):
            # Selling the hedge while the short main leg is still open would leave it naked.
            return _finish(execution, Execution.Status.PLACED, code="exit_open",
                           reason=_exit_open(adapter, leg, legs[n + 1:]))
        resting = resting or result.status == "open"
    # A limit order resting at the broker is accepted but not filled: say so rather than "filled".
    status = Execution.Status.PLACED if resting else Execution.Status.FILLED
    if outside:
        return _finish(execution, status, code="closed_outside", reason="; ".join(outside))
    return _finish(execution, status, code="unprotected" if warning else "", reason=warning)


def _protection_pending(execution: Execution) -> bool:
    """Resumed after its main order filled (e.g. the protection phase of a bot entry): nothing to decide again."""
    return execution.attempts > 1 and execution.orders.filter(leg="main", status=Order.Status.FILLED).exists()


def _defer_protection(execution: Execution, leg: LegPlan) -> bool:
    """A bot subscriber's stop loss / take profit go in a follow-up run of the same execution, queued behind the
    other subscribers' main orders, so no main order waits for someone else's SL/TP calls. Only on the first
    attempt of a bot entry whose alert carries its price (the follow-up plans the same legs again: with a last
    price instead, a moved market could plan them differently), and only with a real queue (eager tasks run in
    turn anyway)."""
    return (bool(settings.BOT_DEFER_PROTECTION) and not settings.CELERY_TASK_ALWAYS_EAGER
            and execution.subscription_id is not None and execution.attempts == 1 and leg.leg == "main"
            and bool(execution.intent.get("price")))


def _protection_deferred(execution: Execution) -> Execution:
    """Keep the execution ``running`` with an expired lease and its fill's latency/slippage saved: the task
    re-enqueues it at once (and the sweeper would, were that message lost). The resumed run finds the main order
    filled (never resent), skips the risk decision and places the SL/TP with the same ids (idempotent)."""
    _record_latency(execution)  # the main order's acknowledgement, not the follow-up's
    execution.lease_until = timezone.now()
    Execution.objects.filter(pk=execution.pk, status=Execution.Status.RUNNING).update(
        lease_until=execution.lease_until, latency_ms=execution.latency_ms, slippage=execution.slippage,
        slippage_bps=execution.slippage_bps)
    execution.protection_deferred = True
    return execution


def _broker_failure(execution: Execution, exc: BrokerError, reason: str) -> Execution:
    """Transient or ambiguous: give the execution back and let the task retry. Final: record why."""
    if isinstance(exc, BrokerTransient | BrokerAmbiguous):
        execution_release(execution_id=execution.pk)
        raise exc
    if isinstance(exc, BrokerAuthError):
        _mark_login_needed(execution.account, exc)
        return _finish(execution, Execution.Status.FAILED, code=exc.code or "auth", reason=reason)
    return _finish(execution, Execution.Status.FAILED, code=exc.code or "broker_rejected", reason=reason)


def _qty(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _described(leg: LegPlan) -> str:
    return f"{leg.leg.replace('_', ' ').capitalize()} order ({leg.side} {_qty(leg.qty)} {leg.symbol})"


def _leg_failure(leg: LegPlan, exc: BrokerError, done: list[str]) -> str:
    text = f"{_described(leg)} failed: {exc.message}"
    if done:
        text += f". Already filled: {', '.join(done)}; check the open positions."
    return text


def _leg_cancelled(leg: LegPlan, result: OrderResult, done: list[str]) -> str:
    text = f"{_described(leg)} was cancelled by the broker without a fill"
    text += f": {result.reject_reason}" if result.reject_reason else ""
    if done:
        text += f". Already filled: {', '.join(done)}; check the open positions."
    return text


def _waited(adapter: BrokerAdapter) -> str:
    return f"within {adapter.fill_wait:g} s" if adapter.fill_wait else "at once"


def _cancel_unfilled_hedge(adapter: BrokerAdapter, order: Order, leg: LegPlan) -> tuple[OrderResult, str]:
    """Cancel a hedge still working at the broker, then read where it ended (it may have filled meanwhile)."""
    outcome = "hedge order cancelled"
    try:
        adapter.cancel_order(client_order_id=order.client_order_id, symbol=order.symbol)
    except BrokerRejected as exc:
        outcome = f"the hedge order could not be cancelled ({exc.message}): check it at the broker"
    found = adapter.order_status(client_order_id=order.client_order_id, symbol=order.symbol)
    if found is None:  # cannot happen for an order we hold an id for; keep it visible rather than guess
        return OrderResult(broker_order_id=order.broker_order_id, status="open"), outcome
    result = _record(order, found, leg)
    if result.status == "open":
        outcome = "the hedge order is still open at the broker: cancel it there"
    return result, outcome


def _hedge_unfilled(adapter: BrokerAdapter, leg: LegPlan, result: OrderResult, rest: list[LegPlan],
                    outcome: str) -> str:
    hedge = f"Hedge {leg.side.upper()} {_qty(leg.qty)} {leg.symbol}"
    if outcome:  # it was still working after the fill wait, and we cancelled it
        parts = [f"{hedge} not filled {_waited(adapter)}"]
    else:
        parts = [f"{hedge} was cancelled by the broker before it filled"
                 + (f" ({result.reject_reason})" if result.reject_reason else "")]
    parts += [f"{r.leg.replace('_', ' ')} {r.side.upper()} not placed" for r in rest]
    return "; ".join(parts + ([outcome] if outcome else []))


def _exit_open(adapter: BrokerAdapter, leg: LegPlan, rest: list[LegPlan]) -> str:
    kept = ", ".join(r.symbol for r in rest)
    return (f"{_described(leg)} is still open at the broker (not filled {_waited(adapter)}); {kept} is kept until "
            "it fills, so the short leg is never left unhedged. Check the order at the broker, then exit again.")


def _unprotected(execution: Execution, what: str) -> str:
    return (f"Filled, but the stop loss / take profit was {what}. The position is open at "
            f"{execution.account.get_broker_display()} without them: set them there or close the position.")


def _mark_login_needed(account: BrokerAccount, exc: BrokerError) -> None:
    BrokerAccount.objects.filter(pk=account.pk).update(
        status=BrokerAccount.Status.LOGIN_NEEDED, status_message=f"Broker login needed: {exc.message}"[:300])


def _record_latency(execution: Execution) -> None:
    if execution.signal_id and execution.latency_ms is None:
        delta = timezone.now() - execution.signal.received_at
        execution.latency_ms = Decimal(delta.total_seconds() * 1000).quantize(Decimal("0.01"))


def _reserve(execution: Execution, leg: LegPlan) -> Order:
    """Insert the leg's order row, or find the one an earlier attempt reserved (the unique key decides).

    A new row is inserted already ``sending`` (it is sent next): the durable mark that the broker may have it,
    without a second round trip. ``fresh`` tells ``_submit`` that this attempt made it, so nothing can have been
    sent yet and there is nothing to look up."""
    try:
        with savepoint_if_nested():  # in autocommit the INSERT alone is atomic: no BEGIN/COMMIT round trips
            order = Order.objects.create(
                execution=execution, leg=leg.leg, account=execution.account,
                client_order_id=client_order_id(execution.pk, leg.leg), symbol=leg.symbol, side=leg.side,
                order_type=leg.order_type, qty=leg.qty, price=leg.price, status=Order.Status.SENDING,
                sent_at=timezone.now(),
            )
            order.fresh = True
            return order
    except IntegrityError:
        return Order.objects.get(execution=execution, leg=leg.leg)


def _request(order: Order, leg: LegPlan) -> OrderRequest:
    return OrderRequest(client_order_id=order.client_order_id, symbol=order.symbol, side=order.side, qty=order.qty,
                        order_type=order.order_type, price=order.price, reference_price=leg.reference_price,
                        reduce_only=leg.reduce_only, extra=leg.extra)


def _submit(adapter: BrokerAdapter, order: Order, leg: LegPlan) -> OrderResult:
    if getattr(order, "fresh", False):
        return _send(adapter, order, leg)
    if order.status in (Order.Status.FILLED, Order.Status.OPEN, Order.Status.CANCELLED):
        return OrderResult(broker_order_id=order.broker_order_id, status=order.status,
                           filled_qty=order.filled_qty, avg_price=order.avg_price, reject_reason=order.reject_reason)
    if order.status in (Order.Status.REJECTED, Order.Status.FAILED):
        raise BrokerRejected(order.reject_reason, code="rejected")
    if order.status == Order.Status.SENDING:
        found = adapter.order_status(client_order_id=order.client_order_id, symbol=order.symbol)
        if found is not None:
            return _found(adapter, order, leg, found)
    Order.objects.filter(pk=order.pk).update(status=Order.Status.SENDING, sent_at=timezone.now())
    return _send(adapter, order, leg)


def _send(adapter: BrokerAdapter, order: Order, leg: LegPlan) -> OrderResult:
    """Place an order whose row is marked ``sending``; an ambiguous answer is settled by a lookup."""
    try:
        result = adapter.place_order(_request(order, leg))
    except BrokerAmbiguous as exc:
        log.warning("ambiguous answer for order %s: %s; looking it up", order.client_order_id, exc.message)
        found = adapter.order_status(client_order_id=order.client_order_id, symbol=order.symbol)
        if found is None:
            raise
        return _found(adapter, order, leg, found)
    except BrokerRejected as exc:
        Order.objects.filter(pk=order.pk).update(status=Order.Status.REJECTED, reject_reason=exc.message,
                                                 raw=exc.raw)
        raise
    return _record(order, result, leg)


def _found(adapter: BrokerAdapter, order: Order, leg: LegPlan, found: OrderResult) -> OrderResult:
    """An order settled by looking it up. A close found this way skipped the adapter's own clean-up after it
    filled, so its stop/target orders are cancelled here (they would otherwise sit on a flat position)."""
    result = _record(order, found, leg)
    if leg.reduce_only and result.status == "filled":
        try:
            adapter.cancel_protection(symbol=leg.symbol, extra=leg.extra)
        except BrokerError as exc:
            log.warning("could not cancel stop/target orders on %s after close %s: %s", leg.symbol,
                        order.client_order_id, exc.message)
    return result


ORDER_STATUS = {"filled": Order.Status.FILLED, "open": Order.Status.OPEN, "cancelled": Order.Status.CANCELLED}


def _record(order: Order, result: OrderResult, leg: LegPlan) -> OrderResult:
    """Store the broker's answer and book the fill into the position, exactly once per order."""
    if result.status == "rejected":
        # Outside the fill's transaction: raising inside it would roll the rejection back.
        Order.objects.filter(pk=order.pk).update(status=Order.Status.REJECTED, reject_reason=result.reject_reason,
                                                 broker_order_id=result.broker_order_id, raw=result.raw)
        raise BrokerRejected(result.reject_reason or "rejected by the broker", code="rejected", raw=result.raw)
    status = ORDER_STATUS.get(result.status, Order.Status.OPEN)
    with transaction.atomic():
        changed = Order.objects.filter(pk=order.pk).exclude(status=Order.Status.FILLED).update(
            status=status, broker_order_id=result.broker_order_id, filled_qty=result.filled_qty,
            avg_price=result.avg_price, raw=result.raw, reject_reason=result.reject_reason,
            filled_at=timezone.now() if status == Order.Status.FILLED else None,
        )
        if changed and status == Order.Status.FILLED:
            position_apply_fill(account=order.account, symbol=order.symbol, side=order.side, qty=result.filled_qty,
                                price=result.avg_price, meta=leg.meta)
            if leg.leg == "main" and leg.meta.get("role") == "main":  # a filled options entry
                position_breakeven_record(account=order.account, symbol=order.symbol)
    return result


def protection_levels(leg: LegPlan, result: OrderResult) -> dict:
    """The stop loss / take profit of a filled entry, as the position records them (rounded to the exchange's tick,
    so it shows what is really set). Only the levels the entry asked for: a later entry without SL/TP keeps the
    levels the position already has."""
    if result.avg_price is None or not leg.sl_tp:
        return {}
    sl, tp = leg.sl_tp
    levels = sl_tp_prices(side=leg.side, entry=result.avg_price, sl=sl, tp=tp)
    if leg.tick_size:
        levels = tuple(None if v is None else round_to_tick(v, leg.tick_size) for v in levels)
    return {k: v for k, v in zip(("stop_loss", "take_profit"), levels, strict=True) if v is not None}


def _protect(execution: Execution, adapter: BrokerAdapter, order: Order, leg: LegPlan, result: OrderResult) -> str:
    """Record the entry's stop loss / take profit on the position and place them at the broker (idempotent:
    a retried execution places the same ones again). A refusal keeps the fill and returns a warning."""
    recorded = protection_levels(leg, result)
    if not recorded:
        return ""
    stop_loss, take_profit = recorded.get("stop_loss"), recorded.get("take_profit")
    Position.objects.filter(account=execution.account, symbol=leg.symbol, status=Position.Status.OPEN).update(
        **recorded)
    try:
        adapter.place_protection(symbol=leg.symbol, entry_side=leg.side, qty=result.filled_qty,
                                 client_order_id=order.client_order_id, stop_loss=stop_loss,
                                 take_profit=take_profit, extra=leg.extra)
    except (BrokerRejected, BrokerAuthError) as exc:
        log.warning("protection for %s refused: %s", order.client_order_id, exc.message)
        if isinstance(exc, BrokerAuthError):
            _mark_login_needed(execution.account, exc)
        return _unprotected(execution, f"refused: {exc.message}")
    return ""
