"""Follow orders left open at a live broker until they end, and settle their executions.

An order the broker took but had not filled when the engine stopped waiting (a Kite order the exchange fills
seconds later, a resting limit order, an exit leg still working) stays ``open`` and its execution ``placed``.
``orders_sync`` (Celery beat, every ``ORDER_SYNC_SECONDS``) asks the broker about each such order by its client
id and then:

* filled: books the fill exactly once (``execution._record``: the order's conditional update books the position
  only for the call that changed it), places the entry's stop loss / take profit as the engine would have, and
  for an options exit whose main leg has now filled, sells the hedge it kept (a new close, main-then-hedge kept);
* cancelled or rejected: marks the order and writes the broker's reason on the execution;
* still open after ``ORDER_SYNC_MAX_AGE_HOURS`` (a trading day): stops following it, and says so.

A ``placed`` execution whose orders have all ended becomes ``filled`` or ``failed``, once (its row is locked and its
status checked first).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from brokers.adapters import get_adapter
from brokers.adapters.base import BrokerAdapter, BrokerAuthError, BrokerError, BrokerRejected
from brokers.models import Broker, BrokerAccount, Execution, Order, Position
from brokers.services.execution import _described, _protect, _record, execution_create_close, execution_reason
from brokers.services.outcomes import execution_save_outcome
from brokers.services.planning import LegPlan, PlanRejected, plan_legs

log = logging.getLogger(__name__)
ENDED = (Order.Status.CANCELLED, Order.Status.REJECTED, Order.Status.FAILED)


@dataclass
class SyncResult:
    checked: int = 0
    filled: list[int] = field(default_factory=list)  # order ids
    ended: list[int] = field(default_factory=list)  # cancelled, rejected or given up
    settled: list[int] = field(default_factory=list)  # execution ids


def open_orders(limit: int = 500):
    """Orders open at a live broker, oldest first, on accounts we can still ask."""
    return (Order.objects.filter(status=Order.Status.OPEN, account__mode=BrokerAccount.Mode.LIVE)
            .exclude(account__broker=Broker.PAPER).exclude(account__status=BrokerAccount.Status.LOGIN_NEEDED)
            .select_related("account", "account__owner", "execution").order_by("created_at")[:limit])


def orders_sync() -> SyncResult:
    result = SyncResult()
    by_account: dict[int, list[Order]] = defaultdict(list)
    for order in open_orders():
        by_account[order.account_id].append(order)
    for orders in by_account.values():
        adapter = get_adapter(orders[0].account)
        for order in orders:
            result.checked += 1
            try:
                _follow(adapter, order, result)
            except BrokerAuthError as exc:
                BrokerAccount.objects.filter(pk=order.account_id).update(
                    status=BrokerAccount.Status.LOGIN_NEEDED,
                    status_message=f"Broker login needed: {exc.message}"[:300])
                break
            except BrokerError as exc:  # a blip: ask again next round
                log.warning("order sync: %s not checked: %s", order.client_order_id, exc.message)
                break
            except Exception:  # noqa: BLE001 - one account's failure must not stop the others' follow-up
                log.exception("order sync: %s failed", order.client_order_id)
                break
    # Every placed execution with nothing left working at the broker (this round's, or one an earlier round left).
    settle = (Execution.objects.filter(status=Execution.Status.PLACED)
              .exclude(orders__status__in=(Order.Status.OPEN, Order.Status.SENDING, Order.Status.RESERVED))
              .select_related("account").order_by("created_at")[:500])
    for execution in settle:
        if execution_settle(execution=execution):
            result.settled.append(execution.pk)
    return result


def _leg_plans(order: Order, adapter: BrokerAdapter) -> tuple[LegPlan, list[LegPlan]]:
    """The leg this order was placed for (its position meta, stop loss / take profit) and the legs planned after
    it, from the execution's plan made again; an order the plan no longer yields gets a bare leg."""
    bare = LegPlan(leg=order.leg, symbol=order.symbol, side=order.side, qty=order.qty, order_type=order.order_type,
                   price=order.price)
    if order.execution is None:
        return bare, []
    try:
        legs = plan_legs(order.execution, adapter=adapter)
    except (PlanRejected, BrokerError) as exc:
        log.info("order sync: plan of execution %s not rebuilt (%s)", order.execution_id, exc)
        return bare, []
    for n, leg in enumerate(legs):
        if leg.leg == order.leg and leg.symbol == order.symbol:
            return leg, legs[n + 1:]
    return bare, []


def _follow(adapter: BrokerAdapter, order: Order, result: SyncResult) -> None:
    found = adapter.order_status(client_order_id=order.client_order_id, symbol=order.symbol)
    if found is None or found.status == "open":
        if _too_old(order):
            _give_up(order)
            result.ended.append(order.pk)
        return
    if found.status != "filled":
        try:
            _record(order, found, LegPlan(leg=order.leg, symbol=order.symbol, side=order.side, qty=order.qty))
        except BrokerRejected:  # _record stored the rejection, with the broker's reason
            pass
        result.ended.append(order.pk)
        return
    leg, rest = _leg_plans(order, adapter)
    _record(order, found, leg)
    result.filled.append(order.pk)
    warning = ""
    if order.execution is not None and leg.leg == "main" and leg.sl_tp and any(leg.sl_tp):
        warning = _protect(order.execution, adapter, order, leg, found)
    if warning:
        Execution.objects.filter(pk=order.execution_id).update(reason_code="unprotected", reason=warning[:2000])
    if leg.leg == "exit_main":
        _close_kept_legs(order, rest)


def _close_kept_legs(order: Order, rest: list[LegPlan]) -> None:
    """The exit's main leg has filled: the hedge it kept can go now (a separate close, run by the engine)."""
    for leg in rest:
        position = Position.objects.filter(account_id=order.account_id, symbol=leg.symbol,
                                           status=Position.Status.OPEN).first()
        if position is not None:
            execution_create_close(position=position, why=f"{leg.symbol} sold after the main leg's exit filled "
                                   f"(execution {order.execution_id})", trigger="exit_hedge")


def _too_old(order: Order) -> bool:
    since = order.sent_at or order.created_at
    return timezone.now() - since > timedelta(hours=settings.ORDER_SYNC_MAX_AGE_HOURS)


def _give_up(order: Order) -> None:
    hours = f"{settings.ORDER_SYNC_MAX_AGE_HOURS:g}"
    Order.objects.filter(pk=order.pk, status=Order.Status.OPEN).update(
        status=Order.Status.FAILED,
        reject_reason=f"Still open at the broker after {hours} h: TradeFlow stopped following it. Check it at "
                      f"{order.account.get_broker_display()} (client id {order.client_order_id}); a fill there is "
                      "not booked here.")


def _ended_text(order: Order) -> str:
    leg = LegPlan(leg=order.leg, symbol=order.symbol, side=order.side, qty=order.qty)
    if order.status == Order.Status.FAILED:
        return f"{_described(leg)}: {order.reject_reason}"
    verb = "was cancelled at the broker without a fill" if order.status == Order.Status.CANCELLED else \
        "was rejected by the broker"
    return f"{_described(leg)} {verb}" + (f": {order.reject_reason}" if order.reject_reason else "")


def execution_settle(*, execution: Execution) -> bool:
    """A ``placed`` execution whose orders have all ended becomes ``filled`` or ``failed`` (once)."""
    orders = list(execution.orders.order_by("id"))
    if not orders or any(o.status in (Order.Status.OPEN, Order.Status.SENDING, Order.Status.RESERVED) for o in orders):
        return False
    ended = [o for o in orders if o.status in ENDED]
    filled = [o.leg for o in orders if o.status == Order.Status.FILLED]
    if ended:
        codes = {Order.Status.CANCELLED: "order_cancelled", Order.Status.REJECTED: "order_rejected",
                 Order.Status.FAILED: "order_unfollowed"}
        status, code = Execution.Status.FAILED, codes[ended[0].status]
        reason = "; ".join(_ended_text(o) for o in ended)
        if filled:
            reason += f". Already filled: {', '.join(filled)}; check the open positions."
    else:
        status = Execution.Status.FILLED
        code = execution.reason_code if execution.reason_code == "unprotected" else ""
        reason = execution.reason if code else "Filled at the broker after resting open"
        if execution.reason_code == "exit_open":
            reason += "; the hedge kept until then is sold by a separate close"
    code, reason = execution_reason(execution, code, reason)
    with transaction.atomic():
        locked = Execution.objects.select_for_update().filter(pk=execution.pk, status=Execution.Status.PLACED).first()
        if locked is None:  # another run settled it first
            return False
        locked.status, locked.reason_code, locked.reason = status, code, reason[:2000]
        locked.finished_at = timezone.now()
        # Through the outcome saver: a bot signal's counters move from "successful" to "failed" if it failed.
        execution_save_outcome(locked, ["status", "reason_code", "reason", "finished_at"])
    from brokers.live import publish_execution

    publish_execution(locked)
    return True
