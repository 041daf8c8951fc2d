"""The Celery app. Tasks live in each app's ``tasks.py``; the worker finds them by autodiscovery."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeflow.settings")

app = Celery("tradeflow", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
