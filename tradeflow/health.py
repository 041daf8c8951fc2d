"""Liveness (constant) and health (database, cache, worker) probes."""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpResponse, JsonResponse


def livez(request):
    return HttpResponse("ok", content_type="text/plain")


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _cache() -> str:
    cache.set("healthz", "1", 5)
    return "ok" if cache.get("healthz") == "1" else "cache did not return what was stored"


def _worker() -> str:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return "ok (in-process)"
    from tradeflow.celery import app

    replies = app.control.ping(timeout=0.5, limit=1)
    return "ok" if replies else "no Celery worker answered within 0.5 s"


def healthz(request):
    checks: dict[str, str] = {}
    for name, probe in (("database", _database), ("cache", _cache), ("worker", _worker)):
        try:
            checks[name] = probe()
        except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
            checks[name] = f"error: {exc.__class__.__name__}: {exc}"[:200]
    healthy = all(v.startswith("ok") for v in checks.values())
    return JsonResponse({"status": "ok" if healthy else "unhealthy", "checks": checks}, status=200 if healthy else 503)
