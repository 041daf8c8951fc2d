"""The Celery app. Tasks live in each app's ``tasks.py``; the worker finds them by autodiscovery."""

import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from tradeflow.startup import freeze_startup_objects

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeflow.settings")

app = Celery("tradeflow", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect  # each prefork child, after the fork
def _child_ready(**_) -> None:
    freeze_startup_objects()


@worker_ready.connect  # the main process: the solo and threads pools run tasks here
def _worker_ready(**_) -> None:
    freeze_startup_objects()
