from __future__ import annotations

import random

from celery import shared_task

from brokers.adapters.base import BrokerAmbiguous, BrokerTransient
from brokers.services.execution import execution_fail, execution_run

MAX_RETRIES = 5


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES)
def execution_run_task(self, execution_id: int) -> None:
    """Run one execution. Redelivery and retries are safe: the service claims and reserves by id."""
    try:
        execution_run(execution_id=execution_id)
    except (BrokerTransient, BrokerAmbiguous) as exc:
        if self.request.retries >= self.max_retries:
            execution_fail(execution_id=execution_id, error=exc)
            return
        backoff = getattr(exc, "retry_after", None) or min(2 ** self.request.retries, 30)
        raise self.retry(exc=exc, countdown=backoff + random.uniform(0, 0.5)) from exc
