"""Browser tests: Debian's headless Chromium (Playwright) against the real ASGI app under uvicorn.

The server is a subprocess on a free loopback port and on the pytest-django test database (so the tests
use ``transactional_db``: the server must see committed rows). Tasks run on the server's in-process thread
pool, as in the embedded mode, so no Celery worker is needed; live updates go over Redis pub/sub with a
channel prefix of this run's own, which the test process also publishes to (the price feed).
Screenshots of every page visited go to ``test-artifacts/screenshots/`` (git-ignored), kept by CI.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Test code only: the production settings module, with the channel layer pointed at this run's Redis prefix.
SERVE = r"""
import os, sys
import django

django.setup()
from django.conf import settings

settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                       "CONFIG": {"hosts": [os.environ["TEST_LAYER_REDIS"]],
                                                  "prefix": os.environ["TEST_LAYER_PREFIX"]}}}
import uvicorn

uvicorn.run("tradeflow.asgi:application", host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_url() -> str:
    db = settings.DATABASES["default"]
    auth = quote(db.get("USER") or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{quote(db['NAME'], safe='')}"


class Server:
    """uvicorn in a subprocess on ``port``; ``restart()`` stops it and starts a new one on the same port."""

    def __init__(self, port: int, env: dict[str, str], log: Path):
        self.port, self.env, self.log_path = port, env, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", SERVE, str(self.port)], cwd=ROOT, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/livez", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"the server did not answer /livez within 30 s:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def confirmation_link(self, timeout: float = 10) -> str:
        """The e-mail confirmation link of the last sign-up (the console e-mail backend prints to the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            links = re.findall(r"(http://127\.0\.0\.1:\d+/accounts/confirm-email/[^\s/]+/)", self.log())
            if links:
                return links[-1]
            time.sleep(0.1)
        pytest.fail(f"no confirmation e-mail in the server log:\n{self.log()[-4000:]}")


@pytest.fixture
def live_layer(settings):
    """The channel layer shared by the test process and the server: Redis pub/sub, a prefix of this run."""
    prefix = f"browser{os.getpid()}x{uuid.uuid4().hex[:6]}"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                           "CONFIG": {"hosts": [settings.TEST_REDIS_URL], "prefix": prefix}}}
    return prefix


@pytest.fixture
def server(transactional_db, live_layer, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "CELERY_BROKER_URL", "SQLITE_PATH", "DJANGO_SETTINGS_MODULE", "TASKS_IN_THREAD")}
    env.update({
        "DJANGO_SETTINGS_MODULE": "tradeflow.settings",
        "DATABASE_URL": _database_url(),
        "SECRET_KEY": settings.SECRET_KEY,
        "FIELD_ENCRYPTION_KEY": settings.FIELD_ENCRYPTION_KEY,
        "CONN_MAX_AGE": "0",
        "DB_POOL_MAX_SIZE": "0",
        "DEBUG": "true",  # static files from the finders (no collectstatic), cookies over plain http
        "PUBLIC_URL": url,
        "ACCOUNT_EMAIL_VERIFICATION": "mandatory",
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend",
        "TEST_LAYER_REDIS": settings.TEST_REDIS_URL,
        "TEST_LAYER_PREFIX": live_layer,
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "WARNING",
    })
    srv = Server(port, env, tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()
    _wait_for_server_sessions_to_end()
    print(f"--- server log ---\n{srv.log()[-8000:]}")  # shown when the test fails


def _wait_for_server_sessions_to_end(timeout: float = 5) -> None:
    """A PostgreSQL backend outlives its client by a moment; the test database is flushed (and at the end
    dropped) only once the server's sessions are gone."""
    from django.db import connection

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid()")
            if cursor.fetchone()[0] == 0:
                return
        time.sleep(0.05)


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread; the test's own ORM calls are still
    # plain synchronous code (Playwright's documented setting for Django tests).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
        # Code run while Playwright is active gets a database connection of its own (its greenlet has its own
        # context): close it here, or it would hold the test database open past the flush and the final drop.
        from django.db import connections

        connections.close_all()


@pytest.fixture
def shot(request):
    """``shot(page, "name")`` saves a full-page screenshot as <test>-<nn>-<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1, 100))
    test = re.sub(r"\W+", "_", request.node.name)

    def take(page, name: str) -> Path:
        path = SHOTS / f"{test}-{next(counter):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


PASSWORD = "Correct-horse-battery-9"


@pytest.fixture
def customer(settings):
    """``customer(email)``: a verified customer whose password the server can check (its default hashers, not
    the test settings' fast MD5), to sign in with ``PASSWORD``."""
    from django.contrib.auth.hashers import make_password

    from tests import factories

    def make(email: str):
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
        user = factories.UserFactory(email=email)
        user.password = make_password(PASSWORD)
        user.save(update_fields=["password"])
        return user

    return make


def sign_in(page, server, email: str) -> None:
    page.goto(server.url + "/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
