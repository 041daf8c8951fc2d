from __future__ import annotations

import logging
import random
from datetime import timedelta

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from brokers.adapters.base import BrokerAmbiguous, BrokerError, BrokerTransient
from brokers.models import Execution
from brokers.services.execution import execution_fail, execution_run

log = logging.getLogger(__name__)
MAX_RETRIES = 5


def _too_late(execution_id: int, backoff: float) -> bool:
    """A signal must not trade minutes late: past SIGNAL_MAX_DELAY_SECONDS it fails instead of retrying."""
    created = Execution.objects.filter(pk=execution_id, kind=Execution.Kind.SIGNAL).values_list(
        "created_at", flat=True).first()
    if created is None:
        return False
    return timezone.now() + timedelta(seconds=backoff) - created > timedelta(seconds=settings.SIGNAL_MAX_DELAY_SECONDS)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES)
def execution_run_task(self, execution_id: int) -> None:
    """Run one execution. Redelivery and retries are safe: the service claims and reserves by id."""
    try:
        execution = execution_run(execution_id=execution_id)
    except (BrokerTransient, BrokerAmbiguous) as exc:
        backoff = getattr(exc, "retry_after", None) or min(2 ** self.request.retries, 30)
        if self.request.retries >= self.max_retries or _too_late(execution_id, backoff):
            execution_fail(execution_id=execution_id, error=exc)
            return
        raise self.retry(exc=exc, countdown=backoff + random.uniform(0, 0.5)) from exc
    except Exception as exc:
        # A bug or an outage of our own (database, adapter missing): never leave the execution "running".
        log.exception("execution %s crashed", execution_id)
        try:
            if self.request.retries >= self.max_retries:
                execution_fail(execution_id=execution_id, error=BrokerError(
                    f"internal error ({exc.__class__.__name__}); the operators have been alerted",
                    code="internal_error"))
                return
            from brokers.services.execution import execution_release

            execution_release(execution_id=execution_id)
        except Exception:  # the database itself may be what failed: retry anyway, the sweeper is the backstop
            log.exception("could not record the crash of execution %s", execution_id)
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30)) from exc
    if getattr(execution, "protection_deferred", False):  # main order filled: its SL/TP go behind the others'
        execution_run_task.apply_async((execution_id,), queue=settings.BOT_EXECUTION_QUEUE or None)
        return
    if execution.status == Execution.Status.RUNNING and not self.request.is_eager:
        # Another attempt holds the lease. After a lost worker (reject_on_worker_lost) the message is back
        # at once, while the dead attempt's lease still runs: come back when it expires instead of dropping it.
        left = (execution.lease_until - timezone.now()).total_seconds() if execution.lease_until else 0
        raise self.retry(countdown=max(left, 0) + 1)


def executions_enqueue(execution_ids: list[int]) -> None:
    """Each execution as its own ``execution_run_task`` (the bot executions' queue), pipelined."""
    from tradeflow.queue import send_many

    send_many(execution_run_task, [(pk,) for pk in execution_ids], queue=settings.BOT_EXECUTION_QUEUE or None)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def executions_batch_task(execution_ids: list[int]) -> int:
    """Run a batch of a bot alert's executions (``brokers.services.batch``); what the batch leaves (exits, retries,
    transient broker errors) goes on as one task per execution. Redelivered after a lost worker, the batch claims
    nothing already running, and those executions' own tasks wait for their lease to run out and resume them."""
    from brokers.services.batch import executions_run_batch

    try:
        outcome = executions_run_batch(execution_ids)
    except Exception:  # e.g. the database away at the claim: each execution's own task retries with backoff
        log.exception("batch of %d executions could not run; handing them out one by one", len(execution_ids))
        executions_enqueue(execution_ids)
        return 0
    executions_enqueue(outcome.single)
    return outcome.finished


def executions_drain_enqueue(execution_id: int) -> None:
    """After the commit, a drain for this account alert, unless one is queued and not started (it will find this
    alert: it clears the flag before it looks). A burst becomes a few drain messages, not one per alert."""
    from tradeflow.queue import enqueue

    enqueue(executions_drain_task, execution_id, unless_queued=True)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def executions_drain_task(execution_id: int) -> int:
    """Run an account alert's entry with whatever other account alerts are waiting (``batch.executions_drain``).
    Redelivered after a lost worker, it finds its execution running and leaves it to the lease and the sweeper, as
    a redelivered batch does. A drain that took all it may sends another one for the rest."""
    from brokers.services.batch import executions_drain
    from tradeflow.queue import queued_clear

    queued_clear(executions_drain_task)  # first: alerts stored from now on send a new drain
    try:
        outcome = executions_drain(execution_id)
    except Exception:  # e.g. the database away at the claim: the execution's own task retries with backoff
        log.exception("drain of execution %s could not run; running it on its own", execution_id)
        if execution_id:  # a follow-up drain (0) has no alert of its own: the sweeper is the backstop for the rest
            execution_run_task.delay(execution_id)
        return 0
    for pk in outcome.single:
        execution_run_task.delay(pk)
    request = executions_drain_task.request
    if outcome.more and not request.is_eager:  # on the queue this one came from
        executions_drain_task.apply_async((0,), queue=(request.delivery_info or {}).get("routing_key"))
    return outcome.finished


@shared_task(ignore_result=True)
def executions_sweep() -> int:
    """Re-enqueue executions whose message was lost (a broker flush, a crash between commit and publish).

    Pending for over a minute, or running with an expired lease. Claiming makes a double enqueue harmless.
    """
    now = timezone.now()
    stuck = list(
        Execution.objects.filter(
            Q(status=Execution.Status.PENDING, created_at__lt=now - timedelta(seconds=60))
            | Q(status=Execution.Status.RUNNING, lease_until__lt=now)
        ).values_list("pk", flat=True)[:500]
    )
    for pk in stuck:
        execution_run_task.delay(pk)
    if stuck:
        log.warning("re-enqueued %d stuck executions", len(stuck))
    return len(stuck)


@shared_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True, time_limit=900, soft_time_limit=840)
def instruments_sync_task(force: bool = False) -> dict | None:
    """The day's Kite instruments (beat runs it every 20 minutes; it syncs once a day, when a session exists).

    Its own time limits: the NFO list is tens of thousands of rows, more than the default task budget.
    """
    from brokers.services.instruments import instruments_sync_daily

    result = instruments_sync_daily(force=force)
    return None if result is None else {"rows": result.rows, "deleted": result.deleted}


def _single_flight(name: str, seconds: int, run):
    """Run ``run()`` unless another run of ``name`` is still going (a cache lock shared by every worker)."""
    from django.core.cache import cache

    key = f"tf:task-lock:{name}"
    if not cache.add(key, 1, timeout=seconds):
        return None
    try:
        return run()
    finally:
        cache.delete(key)


@shared_task(ignore_result=True, time_limit=60, soft_time_limit=50)
def stops_watch_task() -> dict | None:
    """Close positions whose stop loss / take profit / strike stop the market reached (beat: STOP_WATCH_SECONDS).
    Overlapping runs skip; each close is claimed per position, so even two at once close a position once."""
    from brokers.services.watch import stops_watch

    result = _single_flight("stops-watch", 60, stops_watch)
    return None if result is None else {"checked": result.checked, "closes": result.closes,
                                        "reconciled": result.reconciled}


@shared_task(ignore_result=True, time_limit=120, soft_time_limit=100)
def orders_sync_task() -> dict | None:
    """Follow orders left open at live brokers until they fill or end (beat: ORDER_SYNC_SECONDS)."""
    from brokers.services.order_sync import orders_sync

    result = _single_flight("orders-sync", 120, orders_sync)
    return None if result is None else {"checked": result.checked, "filled": result.filled, "ended": result.ended,
                                        "settled": result.settled}


@shared_task(ignore_result=True, time_limit=30, soft_time_limit=25)
def prices_feed_task() -> dict | None:
    """Mark open positions to market and push the P&L to the dashboards (beat: PRICE_FEED_SECONDS)."""
    from brokers.services.prices import prices_mark

    result = _single_flight("prices-feed", 30, prices_mark)
    return None if result is None else {"checked": result.checked, "changed": len(result.changed)}


@shared_task(ignore_result=True, time_limit=120, soft_time_limit=100)
def positions_reconcile_task() -> dict | None:
    """Book live positions closed outside TradeFlow (in the broker's app); beat: RECONCILE_SECONDS. Each account
    is on its own: one broker's error is logged and the others are still reconciled. Books only, never orders."""
    from brokers.services.reconcile import positions_reconcile, reconcile_accounts

    def run() -> dict:
        summary: dict = {"accounts": 0, "booked": 0, "foreign": 0, "skipped": []}
        for account in reconcile_accounts():
            summary["accounts"] += 1
            try:
                result = positions_reconcile(account)
            except SoftTimeLimitExceeded:
                raise  # the round's time is up: the next round goes on, not the rest of this one
            except Exception:  # noqa: BLE001 - one account's failure must not stop the others' reconcile
                log.exception("reconcile: account %s failed", account.pk)
                summary["skipped"].append(f"{account.pk}: internal error")
                continue
            summary["booked"] += len(result.booked)
            summary["foreign"] += len(result.foreign)
            summary["skipped"] += [f"{account.pk}: {why}" for why in result.skipped]
        return summary

    return _single_flight("positions-reconcile", 120, run)
