"""Test settings: the production settings module, with tasks eager and in the calling thread.

The database is PostgreSQL when DATABASE_URL is set (CI, `make test` on a machine that has it), else
SQLite. Tests that need real services are marked (pg, redis, worker, chromium); see tests/conftest.py.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("FIELD_ENCRYPTION_KEY", "Gx3jq0m2kq6m2pYz3d0HcNq8l0S5D1n8bV9c2W7xk4E=")

from tradeflow.settings import *  # noqa: E402,F403

TEST_REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
TASKS_IN_THREAD = False
CELERY_BROKER_URL = "memory://"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
WEBHOOK_RATE_LIMIT = "1000/m"
STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}  # noqa: F405
DEBUG = False
ALLOWED_HOSTS = ["*"]
SIMULATED_FEED = False  # a test that wants the demo feed starts it
