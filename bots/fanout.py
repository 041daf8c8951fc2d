"""One bot signal → one execution per receiving subscription, dispatched to run in parallel.

Exactly-once per subscriber rests on the engine's guarantees: ``Execution`` is unique per (signal, account), so
a redelivered fan-out creates nothing new (``ignore_conflicts``) and re-dispatches only what is still pending;
each execution is claimed with a lease and reserves its orders before any broker call (brokers/services).

Each execution carries the subscriber's effective config in its intent (margin, leverage, lots, SL/TP %, limits),
so the record shows what was traded and why, and planning needs no further lookups.
"""

from __future__ import annotations

import logging
import random

from django.conf import settings

from bots.models import Subscription
from bots.services import effective_config, receiving_statuses
from brokers.models import Execution
from tradeflow.queue import send_many
from webhooks.models import Signal

log = logging.getLogger(__name__)
_shuffle = random.SystemRandom().shuffle


def _pct(value) -> dict | None:
    """A stop/target % as the engine's SL/TP spec; 0 % (or none) means no order."""
    return {"mode": "pct", "value": str(value)} if value else None


def execution_intent(intent: dict, subscription: Subscription) -> dict:
    cfg = effective_config(subscription)
    out = {**intent, "bot": {"id": subscription.bot_id, "subscription": subscription.pk},
           "sizing": {"margin": str(cfg.margin), "margin_currency": cfg.margin_currency, "leverage": cfg.leverage,
                      "lots": cfg.lots},
           "limits": {"max_daily_loss": None if cfg.max_daily_loss is None else str(cfg.max_daily_loss),
                      "max_concurrent_positions": cfg.max_concurrent_positions}}
    if intent["action"] == "entry":
        out |= {"sl": _pct(cfg.stop_loss_pct), "tp": _pct(cfg.take_profit_pct)}
        if intent.get("option"):
            out["lots"] = cfg.lots  # the options planner reads the lots from the intent
    return out


def bot_signal_fan_out(*, signal_id: str) -> list[int]:
    """Create the signal's executions (idempotent) and return the pending ones' ids in a random order."""
    return [pk for chunk in bot_signal_fan_out_chunks(signal_id=signal_id) for pk in chunk]


def bot_signal_fan_out_chunks(*, signal_id: str, size: int = 500):
    """``bot_signal_fan_out`` a chunk at a time: yields each chunk's pending execution ids as soon as they are
    committed, so the first subscribers' batches run while the rest are still being created (1,000 rows took
    ~250 ms to build and insert). The subscribers are shuffled first: nobody is always served last."""
    signal = Signal.objects.select_related("bot").get(pk=signal_id)
    bot = signal.bot
    subscriptions = list(Subscription.objects.filter(bot=bot, status__in=receiving_statuses(signal.intent)))
    _shuffle(subscriptions)
    for start in range(0, len(subscriptions), size):
        rows = []
        for subscription in subscriptions[start:start + size]:
            subscription.bot = bot  # one bot object for all: no query per subscriber
            rows.append(Execution(signal=signal, account_id=subscription.account_id, subscription=subscription,
                                  kind=Execution.Kind.SIGNAL, intent=execution_intent(signal.intent, subscription)))
        # One INSERT (atomic on its own). A redelivered fan-out (worker lost after it) conflicts on (signal,
        # account): nothing doubles, and what is still pending is handed out again.
        Execution.objects.bulk_create(rows, ignore_conflicts=True)
        yield list(Execution.objects.filter(signal=signal, status=Execution.Status.PENDING,
                                            account_id__in=[row.account_id for row in rows])
                   .values_list("pk", flat=True))
    total = Execution.objects.filter(signal=signal).count()
    Signal.objects.filter(pk=signal.pk).update(total_subscribers=total)


def executions_dispatch(execution_ids: list[int]) -> None:
    """Hand the executions to Celery. In batches of ``BOT_BATCH_SIZE`` (``brokers.services.batch``: each batch one
    task, the batches in parallel on the workers' pool, a broker's calls concurrent within a batch), or with a batch
    size of 0 each execution as its own task. Either way each subscriber is retried and failed on its own, so one
    subscriber's broker trouble neither delays nor fails the others."""
    from brokers.tasks import executions_batch_task, executions_enqueue

    size = settings.BOT_BATCH_SIZE
    if size <= 0:
        executions_enqueue(execution_ids)
        return
    batches = [(execution_ids[n:n + size],) for n in range(0, len(execution_ids), size)]
    send_many(executions_batch_task, batches, queue=settings.BOT_EXECUTION_QUEUE or None)
