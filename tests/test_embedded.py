"""The embedded default mode end to end, as `make run` starts it: nothing configured but a data dir.

migrate → seed_demo --json → uvicorn; the demo alert is posted to the printed webhook URL and the
in-process task runner fills it into the SQLite database while the request has long been answered.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# Everything that would switch the process out of the embedded default (or point it at the test setup).
CLEARED = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "FIELD_ENCRYPTION_KEY", "CI", "DJANGO_SETTINGS_MODULE",
           "CELERY_BROKER_URL", "TASKS_IN_THREAD", "SQLITE_PATH", "PUBLIC_URL", "DEBUG", "ALLOWED_HOSTS",
           "LIVE_TRADING_ENABLED")
TERMINAL = ("filled", "rejected", "failed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def embedded(tmp_path):
    """Environment, data dir and base URL of an embedded TradeFlow; the server is started by the test."""
    data_dir = tmp_path / "data"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update({"TRADEFLOW_DATA_DIR": str(data_dir), "PUBLIC_URL": f"http://127.0.0.1:{port}",
                "PYTHONUNBUFFERED": "1"})
    return {"env": env, "data_dir": data_dir, "port": port, "url": f"http://127.0.0.1:{port}",
            "log": tmp_path / "server.log"}


def manage(embedded, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=embedded["env"], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def server(embedded):
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        log = open(embedded["log"], "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tradeflow.asgi:application", "--host", "127.0.0.1",
             "--port", str(embedded["port"]), "--no-access-log"],
            cwd=ROOT, env=embedded["env"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"uvicorn exited with {proc.returncode}:\n{embedded['log'].read_text()}")
            try:
                if httpx.get(embedded["url"] + "/livez", timeout=1).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"uvicorn did not answer /livez within 30 s:\n{embedded['log'].read_text()}")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    if embedded["log"].exists():
        print(f"--- server log ---\n{embedded['log'].read_text()[-8000:]}")  # shown when the test fails


def _query(db_path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
        return db.execute(sql, params).fetchall()


def test_embedded_mode_from_nothing_to_a_filled_paper_trade(embedded, server):
    data_dir = embedded["data_dir"]

    manage(embedded, "migrate", "--noinput")
    keys = {name: (data_dir / name).read_text() for name in ("secret_key", "field_encryption.key")}
    demo = json.loads(manage(embedded, "seed_demo", "--json"))

    assert demo["admin"]["email"] and demo["admin"]["password"]
    assert demo["customer"]["email"] and demo["customer"]["password"]
    webhook_url = demo["account_webhook_url"]
    assert re.fullmatch(re.escape(embedded["url"]) + r"/api/v1/webhooks/tf_[\w-]{20,}", webhook_url), webhook_url
    assert webhook_url in demo["curl"]
    alert = re.search(r"-d '(\{.*\})'$", demo["curl"]).group(1)

    server()
    started = time.perf_counter()
    response = httpx.post(webhook_url, content=alert, headers={"Content-Type": "text/plain"}, timeout=10)
    ack_seconds = time.perf_counter() - started

    assert response.status_code == 202, response.text
    assert ack_seconds < 1.0, f"the webhook took {ack_seconds:.2f} s to answer"
    body = response.json()
    assert body["status"] == "accepted"
    signal_id = uuid.UUID(body["signal_id"]).hex  # SQLite stores UUIDs as 32 hex digits

    db_path = data_dir / "tradeflow.sqlite3"
    deadline, rows = time.monotonic() + 20, []
    while time.monotonic() < deadline:
        rows = _query(db_path, "SELECT status, reason FROM brokers_execution WHERE signal_id = ?", (signal_id,))
        if rows and rows[0][0] in TERMINAL:
            break
        time.sleep(0.1)
    assert rows and rows[0][0] == "filled", f"execution of the demo alert: {rows}"
    [(symbol, side, qty, avg_price, stop_loss)] = _query(
        db_path, "SELECT symbol, side, qty, avg_price, stop_loss FROM brokers_position WHERE status = 'open'")
    assert (symbol, side) == ("NIFTYBEES", "long")
    assert (Decimal(str(qty)), Decimal(str(avg_price))) == (Decimal("10"), Decimal("265.40"))
    assert Decimal(str(stop_loss)) == Decimal("262.746")

    # The demo bot: its printed curl trades on the customer's paper account through the fan-out.
    assert demo["bot_webhook_url"] in demo["bot_curl"] and demo["bot_secret"] in demo["bot_curl"]
    bot_alert = re.search(r"-d '(\{.*\})'$", demo["bot_curl"]).group(1)
    response = httpx.post(demo["bot_webhook_url"], content=bot_alert, headers={"Content-Type": "text/plain"},
                          timeout=10)
    assert response.status_code == 202 and response.json()["total_subscribers"] == 1, response.text
    bot_signal = uuid.UUID(response.json()["signal_id"]).hex
    deadline, rows = time.monotonic() + 20, []
    while time.monotonic() < deadline:
        rows = _query(db_path, "SELECT status, reason FROM brokers_execution WHERE signal_id = ?", (bot_signal,))
        if rows and rows[0][0] in TERMINAL:
            break
        time.sleep(0.1)
    assert rows and rows[0][0] == "filled", f"execution of the demo bot alert: {rows}"

    live = httpx.get(embedded["url"] + "/livez", timeout=5)
    assert live.status_code == 200
    health = httpx.get(embedded["url"] + "/healthz", timeout=5)
    assert health.status_code == 200, health.text
    assert health.json()["checks"] == {"database": "ok", "cache": "ok", "worker": "ok (in-process)"}

    # The keys were made once, on first run, and every later process used them.
    for name, text in keys.items():
        path = data_dir / name
        assert path.read_text() == text and text.strip()
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{name} is readable by others: {oct(mode)}"
    assert db_path.exists()
