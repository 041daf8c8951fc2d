from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError

from bots.fanout import bot_signal_fan_out_chunks, executions_dispatch


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True, autoretry_for=(DatabaseError,),
             retry_backoff=1, retry_backoff_max=10, max_retries=5)
def bot_signal_fanout_task(signal_id: str) -> int:
    """A bot signal → its executions, dispatched. Safe to run twice (see ``bots.fanout``): a retry or a redelivery
    creates nothing new and re-dispatches only what is still pending."""
    count = 0
    for ids in bot_signal_fan_out_chunks(signal_id=signal_id, size=settings.BOT_BATCH_SIZE or 500):
        executions_dispatch(ids)  # each chunk as soon as it is committed
        count += len(ids)
    return count
