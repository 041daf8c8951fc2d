"""Hand work to Celery after the current transaction commits.

Production: ``task.delay`` to the Redis broker. Embedded mode: Celery runs eagerly, and the eager run
is handed to a small thread pool so the request that enqueued it answers first (as it would with a
worker). Tests run eagerly in the calling thread (TASKS_IN_THREAD off) so they stay deterministic.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections, transaction

log = logging.getLogger(__name__)
_pool: ThreadPoolExecutor | None = None


def _run_in_thread(task, args: tuple) -> None:
    close_old_connections()
    try:
        task.apply(args=args, throw=False)
    except Exception:  # pragma: no cover - apply() already records failures
        log.exception("in-process task %s failed", task.name)
    finally:
        close_old_connections()


def enqueue(task, *args) -> None:
    """Run ``task(*args)`` once the surrounding transaction has committed (now, if there is none)."""
    global _pool
    if settings.CELERY_TASK_ALWAYS_EAGER and settings.TASKS_IN_THREAD:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tasks")
        pool = _pool
        transaction.on_commit(lambda: pool.submit(_run_in_thread, task, args))
    else:
        transaction.on_commit(lambda: task.delay(*args))


def send_many(task, args_list: list[tuple], *, queue: str | None = None) -> None:
    """One message per args tuple, now (not on commit), on one broker connection, pipelined: one round trip per 500
    messages (kombu >= 5.7 on Redis; elsewhere one by one). Sent one at a time, the sending thread waited for the GIL
    after every send behind the workers' busy threads, and the last of 1,000 reached the queue seconds late. Eager
    (embedded mode, tests): each runs in turn here, an error in one kept from the rest."""
    if not args_list:
        return
    if task.app.conf.task_always_eager:
        for args in args_list:
            task.apply(args=args, throw=False)
        return
    with task.app.producer_or_acquire() as producer:
        batch = producer.batch(max_size=500) if hasattr(producer, "batch") else contextlib.nullcontext()
        with batch:
            for args in args_list:
                task.apply_async(args, producer=producer, queue=queue)
