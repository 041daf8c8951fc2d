"""Run the stop watcher and the open-order follow-up in a loop, for machines without Celery beat.

Production runs both from the ``beat`` process (``CELERY_BEAT_SCHEDULE``). Embedded mode has no beat: run
``python manage.py watch_stops`` beside the server, or stops and resting orders are not followed.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from brokers.tasks import orders_sync_task, stops_watch_task


class Command(BaseCommand):
    help = "Watch stop losses / take profits and follow open broker orders, every STOP_WATCH_SECONDS."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one round, then exit")

    def handle(self, *args, once: bool = False, **options):
        next_sync = 0.0
        while True:
            watched = stops_watch_task()
            if time.monotonic() >= next_sync:
                orders_sync_task()
                next_sync = time.monotonic() + settings.ORDER_SYNC_SECONDS
            if watched and (watched["closes"] or watched["reconciled"]):
                self.stdout.write(f"closes started: {watched['closes']}, booked at broker: {watched['reconciled']}")
            if once:
                return
            time.sleep(settings.STOP_WATCH_SECONDS)
            close_old_connections()  # a long-lived process: drop connections the database has closed meanwhile
