"""Run callables at the same moment on their own threads (each with its own database connection), the way two
workers or two beat rounds would; for PostgreSQL tests with ``django_db(transaction=True)``."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connection


def run_at_once(calls: list[Callable[[], object]], *, timeout: float = 60) -> tuple[list, list[BaseException]]:
    """Start every call together (a barrier), wait for all; returns their results and the exceptions raised."""
    start = threading.Barrier(len(calls), timeout=timeout)
    results: list = []
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            start.wait()
            results.append(call())
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results, errors
