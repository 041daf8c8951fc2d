"""Hand work to Celery after the current transaction commits.

Production: ``task.delay`` to the Redis broker. Embedded mode: Celery runs eagerly, and the eager run
is handed to a small thread pool so the request that enqueued it answers first (as it would with a
worker). Tests run eagerly in the calling thread (TASKS_IN_THREAD off) so they stay deterministic.
"""

from __future__ import annotations

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
