"""A real Celery worker (a subprocess) against the test PostgreSQL database and a real Redis broker.

The test process publishes to Redis exactly as production does (``transaction.on_commit`` → ``delay``);
the worker is ``celery -A tradeflow worker`` with the production settings module, pointed at the
pytest-django test database. Redis uses a database number of its own and each test a queue of its own,
removed afterwards: two runs of this file at once (two checkouts, CI and a developer) never see each
other's tasks, which a shared queue would hand to a worker on the other run's database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote, urlparse

import pytest
from django.conf import settings
from django.utils import timezone

from brokers.models import Execution, Order, PaperOrder, Position
from brokers.services import execution_create_for_signal
from brokers.services.execution import client_order_id
from brokers.tasks import execution_run_task
from tests import factories
from webhooks.formats import parse_account_payload
from webhooks.models import Signal

pytestmark = [pytest.mark.pg, pytest.mark.redis, pytest.mark.worker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = 13  # not the database a developer's cache or the benchmark uses
FILL_TIMEOUT = 20.0

# Starts the worker with the paper broker made to hang *after* it accepted the first order, so a test
# can kill the process at exactly that point; and with a short lease, so a resume comes within seconds.
# Test code only: it patches the worker process, not the application.
HANGING_WORKER = r"""
import os, sys, time
from datetime import timedelta
from pathlib import Path

import django

django.setup()
import brokers.services.execution as engine
from brokers.adapters.paper import PaperAdapter

engine.LEASE = timedelta(seconds=float(os.environ["TEST_LEASE_SECONDS"]))
marker = Path(os.environ["TEST_HANG_MARKER"])
_place_order = PaperAdapter.place_order


def place_order(self, request):
    result = _place_order(self, request)  # the paper broker has accepted and filled the order...
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(600)  # ...and its answer never arrives: the test kills this process here
    return result


PaperAdapter.place_order = place_order
from celery.bin.celery import main

sys.argv = ["celery", *sys.argv[1:]]
sys.exit(main())
"""


def _redis_url() -> str:
    parsed = urlparse(settings.TEST_REDIS_URL)
    return parsed._replace(path=f"/{REDIS_DB}").geturl()


def _database_url() -> str:
    db = settings.DATABASES["default"]
    auth = quote(db.get("USER") or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{quote(db['NAME'], safe='')}"


def _drop_queue(queue: str) -> None:
    import redis

    client = redis.Redis.from_url(_redis_url())
    try:
        client.delete(queue, f"_kombu.binding.{queue}")
    finally:
        client.close()


def _reset_connections(app) -> None:
    """Drop pooled broker connections so the next publish uses the broker now configured."""
    from kombu import pools

    pools.reset()
    app._pool = None
    app.__dict__.pop("amqp", None)  # rebuilt from the configuration now in force (default queue)


@pytest.fixture
def celery_app(settings):
    """The test process's Celery app, publishing to the test Redis instead of running tasks eagerly."""
    from tradeflow.celery import app

    queue = f"tftest-{uuid.uuid4().hex[:12]}"
    keys = ("broker_url", "task_always_eager", "task_default_queue")
    saved = {key: app.conf[key] for key in keys}
    app.conf.update(broker_url=_redis_url(), task_always_eager=False, task_default_queue=queue)
    _reset_connections(app)
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.TASKS_IN_THREAD = False
    yield app
    app.conf.update(saved)
    _reset_connections(app)
    _drop_queue(queue)


class Worker:
    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, name: str):
        self.name, self.log_path = name, log_path
        self._log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"\n--- worker log ({self.log_path}) ---\n{self.log()[-8000:]}"

    def wait_ready(self, app, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the Celery worker exited with {self.proc.returncode} while starting{self.describe()}")
            if app.control.ping(destination=[self.name], timeout=0.5):
                return
        pytest.fail(f"the Celery worker did not answer a ping within {timeout:.0f} s{self.describe()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown: unacked messages go back to the broker
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:  # pool children of a killed parent, if any are left: only the group this test started
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log_file.close()


@pytest.fixture
def start_worker(transactional_db, celery_app, tmp_path) -> Callable[..., Worker]:
    """Start ``celery -A tradeflow worker`` on the test database and broker; stopped at teardown."""
    started: list[Worker] = []

    def start(*, pool: str = "prefork", concurrency: int = 2, script: str | None = None,
              extra_env: dict[str, str] | None = None) -> Worker:
        name = f"tfw{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        env = {k: v for k, v in os.environ.items()
               if k not in ("CELERY_BROKER_URL", "TASKS_IN_THREAD", "SQLITE_PATH", "DJANGO_SETTINGS_MODULE")}
        env.update({
            "DJANGO_SETTINGS_MODULE": "tradeflow.settings",
            "DATABASE_URL": _database_url(),
            "REDIS_URL": _redis_url(),
            "SECRET_KEY": settings.SECRET_KEY,
            "FIELD_ENCRYPTION_KEY": settings.FIELD_ENCRYPTION_KEY,
            "CONN_MAX_AGE": "0",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        })
        head = [sys.executable, "-c", script] if script else [sys.executable, "-m", "celery"]
        argv = [*head, "-A", "tradeflow", "worker", f"--pool={pool}", f"--concurrency={concurrency}",
                "--loglevel=INFO", "-n", name, "-Q", celery_app.conf.task_default_queue,
                "--without-gossip", "--without-mingle", "--without-heartbeat"]
        worker = Worker(argv, env, tmp_path / f"worker-{len(started)}.log", name)
        started.append(worker)
        worker.wait_ready(celery_app)
        return worker

    yield start
    for worker in started:
        worker.stop()
        print(worker.describe())  # pytest shows teardown output only with a failing test


def wait_until(predicate: Callable[[], bool], worker: Worker, what: str, timeout: float = FILL_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker exited ({worker.proc.returncode}) while waiting for {what}{worker.describe()}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{worker.describe()}")


def _status(execution_id: int) -> str:
    return Execution.objects.values_list("status", flat=True).get(pk=execution_id)


def _signal_execution(account, payload: dict) -> Execution:
    intent = parse_account_payload(payload, account_broker=account.broker)
    signal_ = Signal.objects.create(account=account, format=intent["format"], body_hash=uuid.uuid4().hex,
                                    payload=payload, intent=intent, received_at=timezone.now())
    return execution_create_for_signal(signal=signal_, account=account)


@pytest.fixture
def account(transactional_db):
    account, key = factories.paper_account(owner=factories.UserFactory())
    account.raw_key = key
    return account


BUY = {"version": "unify.v1", "intent": {"side": "buy", "type": "market", "symbol": "NIFTYBEES", "qty": "10",
                                         "price": "265.40", "sl": {"mode": "pct", "value": 1}}}


def test_webhook_alert_is_filled_by_the_worker(client, account, start_worker):
    worker = start_worker()

    response = client.post(f"/api/v1/webhooks/{account.raw_key}", data=json.dumps(BUY), content_type="text/plain")

    assert response.status_code == 202, response.content
    execution = Execution.objects.get(signal_id=response.json()["signal_id"])
    wait_until(lambda: _status(execution.pk) in Execution.TERMINAL, worker, "the alert's execution to finish")
    execution.refresh_from_db()
    assert execution.status == Execution.Status.FILLED, (execution.reason_code, execution.reason)
    assert execution.latency_ms is not None and execution.attempts == 1
    order = Order.objects.get(execution=execution)
    assert (order.status, order.side, order.qty, order.avg_price) == ("filled", "buy", 10, Decimal("265.40"))
    assert PaperOrder.objects.filter(client_order_id=order.client_order_id).count() == 1
    position = Position.objects.get(account=account, status="open")
    assert (position.symbol, position.side, position.qty) == ("NIFTYBEES", "long", 10)
    assert position.stop_loss == Decimal("262.746")
    # A paper entry is drained (brokers.services.batch.executions_drain): its task ran it.
    wait_until(lambda: re.search(r"executions_drain_task\[[-\w]+\] succeeded in [\d.]+s: 1", worker.log())
               is not None, worker, "the worker to log the task's success", timeout=5)


def test_a_burst_of_alerts_is_drained_by_two_worker_processes_each_alert_filled_once(client, account, start_worker):
    """40 alerts stored before the worker starts: the first sends a drain, the others find one queued; each drain
    takes up to 20 waiting alerts and sends another while some may be left. Every alert ends filled with one order."""
    ids = []
    for n in range(40):
        body = {**BUY, "id": f"burst-{n}", "intent": {**BUY["intent"], "price": str(265 + n)}}
        response = client.post(f"/api/v1/webhooks/{account.raw_key}", data=json.dumps(body), content_type="text/plain")
        assert response.status_code == 202, response.content
        ids.append(Execution.objects.get(signal_id=response.json()["signal_id"]).pk)
    worker = start_worker(concurrency=2)

    wait_until(lambda: all(_status(pk) in Execution.TERMINAL for pk in ids), worker, "the 40 alerts to finish")
    assert set(Execution.objects.filter(pk__in=ids).values_list("status", "attempts")) == {("filled", 1)}
    assert Order.objects.filter(execution_id__in=ids).count() == 40
    assert PaperOrder.objects.filter(account=account).count() == 40
    position = Position.objects.get(account=account, status="open")
    assert (position.qty, position.avg_price) == (400, Decimal("284.5"))  # 265 … 304, each fill booked once

    def drained() -> list[int]:  # what each alert's drain task finished
        return [int(n) for n in re.findall(r"executions_drain_task\[[-\w]+\] succeeded in [\d.]+s: (\d+)",
                                           worker.log())]

    wait_until(lambda: sum(drained()) == 40, worker, "the drains to log their work", timeout=10)
    assert 2 <= len(drained()) <= 5 and max(drained()) == 20, drained()  # a few drains, none finished one twice


def test_a_concurrent_burst_through_the_served_app_is_received_in_batches_and_each_alert_filled_once(
        account, start_worker, monkeypatch, settings):
    """40 alerts at once through the ASGI app uvicorn serves, its receive threads writing to PostgreSQL and publishing
    to Redis: they are received in a few batches (group commit), each answered with its own signal, and the worker
    fills each once."""
    import asyncio

    from django.core.asgi import get_asgi_application
    from django.db import connections

    from tests.asgi_client import asgi_request
    from webhooks.asgi import WebhookRouter

    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)  # receive threads close theirs
    settings.WEBHOOK_RECEIVE_BATCH = 16
    router = WebhookRouter(get_asgi_application(), threads=4)
    sizes, run = [], router.batcher.run

    async def counted(inbounds):
        sizes.append(len(inbounds))
        return await run(inbounds)

    router.batcher.run = counted
    worker = start_worker(concurrency=2)
    bodies = [{**BUY, "id": f"together-{n}", "intent": {**BUY["intent"], "price": str(265 + n)}} for n in range(40)]

    async def burst():
        return await asyncio.gather(*(asgi_request(router, "POST", f"/api/v1/webhooks/{account.raw_key}",
                                                   json.dumps(body), "text/plain") for body in bodies))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [202] * 40, [r.content for r in responses]
    signal_ids = [r.json()["signal_id"] for r in responses]
    # Both receivers took 16 of what was waiting; the first to finish took the rest.
    assert len(set(signal_ids)) == 40 and sizes == [16, 16, 8], sizes
    stored = dict(Signal.objects.filter(id__in=signal_ids).values_list("id", "client_id"))
    assert [stored[uuid.UUID(sid)] for sid in signal_ids] == [body["id"] for body in bodies]  # each its own
    ids = list(Execution.objects.filter(signal_id__in=signal_ids).values_list("pk", flat=True))
    wait_until(lambda: all(_status(pk) in Execution.TERMINAL for pk in ids), worker, "the 40 alerts to finish")
    assert set(Execution.objects.filter(pk__in=ids).values_list("status", "attempts")) == {("filled", 1)}
    assert Order.objects.filter(execution_id__in=ids).count() == 40
    assert PaperOrder.objects.filter(account=account).count() == 40
    position = Position.objects.get(account=account, status="open")
    # Each fill booked once; the average is kept to 8 places, so the order the drains ran in may show in the last one.
    assert position.qty == 400 and abs(position.avg_price - Decimal("284.5")) <= Decimal("0.00000002")


def test_the_same_task_delivered_four_times_places_one_order(account, start_worker, celery_app):
    worker = start_worker(concurrency=2)
    execution = _signal_execution(account, BUY)
    task_id = str(uuid.uuid4())

    for _ in range(4):  # the broker redelivering one message, as it may under acks_late
        execution_run_task.apply_async(args=(execution.pk,), task_id=task_id)

    def handled() -> int:
        log = worker.log()
        return log.count(f"[{task_id}] succeeded") + log.count(f"[{task_id}] retry")

    wait_until(lambda: handled() >= 4, worker, "four deliveries to be handled")
    execution.refresh_from_db()
    assert execution.status == Execution.Status.FILLED
    assert execution.attempts == 1
    assert Order.objects.filter(execution=execution).count() == 1
    assert PaperOrder.objects.filter(account=account).count() == 1
    [position] = Position.objects.filter(account=account)
    assert position.qty == 10


@pytest.mark.parametrize("broker_has_it", [True, False], ids=["broker-accepted", "never-sent"])
def test_worker_resumes_an_execution_left_by_a_crashed_worker(account, start_worker, broker_has_it):
    """The aftermath of a crash mid-order: a RUNNING execution whose lease expired, its order 'sending'."""
    worker = start_worker()
    execution = _signal_execution(account, BUY)
    Execution.objects.filter(pk=execution.pk).update(status=Execution.Status.RUNNING, attempts=1,
                                                     lease_until=timezone.now() - timedelta(seconds=5))
    cid = client_order_id(execution.pk, "main")
    Order.objects.create(execution=execution, account=account, leg="main", client_order_id=cid, symbol="NIFTYBEES",
                         side="buy", qty=10, status=Order.Status.SENDING, sent_at=timezone.now())
    if broker_has_it:
        PaperOrder.objects.create(account=account, client_order_id=cid, symbol="NIFTYBEES", side="buy", qty=10,
                                  price=Decimal("264.90"))

    execution_run_task.delay(execution.pk)

    wait_until(lambda: _status(execution.pk) in Execution.TERMINAL, worker, "the execution to be resumed")
    execution.refresh_from_db()
    assert execution.status == Execution.Status.FILLED, execution.reason
    assert execution.attempts == 2
    [paper_order] = PaperOrder.objects.filter(account=account)
    assert paper_order.client_order_id == cid
    order = Order.objects.get(execution=execution)
    assert (order.status, order.broker_order_id) == ("filled", f"P{paper_order.pk}")
    expected_price = Decimal("264.90") if broker_has_it else Decimal("265.40")
    assert order.avg_price == expected_price
    position = Position.objects.get(account=account, status="open")
    assert (position.qty, position.avg_price) == (10, expected_price)


def test_worker_process_killed_after_the_broker_accepted_is_resumed_without_a_second_order(
        account, start_worker, tmp_path):
    """kill -9 of the pool process while the broker's answer is in flight; the message comes back at once."""
    marker = tmp_path / "hung"
    worker = start_worker(concurrency=1, script=HANGING_WORKER,
                          extra_env={"TEST_HANG_MARKER": str(marker), "TEST_LEASE_SECONDS": "5"})
    execution = _signal_execution(account, BUY)

    execution_run_task.delay(execution.pk)

    wait_until(marker.exists, worker, "the paper broker to accept the order")
    time.sleep(0.05)  # the pid is written before the file is closed
    assert PaperOrder.objects.filter(account=account).count() == 1
    assert Order.objects.get(execution=execution).status == Order.Status.SENDING
    assert _status(execution.pk) == Execution.Status.RUNNING
    os.kill(int(marker.read_text()), signal.SIGKILL)

    wait_until(lambda: _status(execution.pk) in Execution.TERMINAL, worker,
               "the redelivered task to resume the execution", timeout=30)
    execution.refresh_from_db()
    assert execution.status == Execution.Status.FILLED, execution.reason
    assert execution.attempts == 2
    assert "exited prematurely" in worker.log() or "WorkerLostError" in worker.log()
    [paper_order] = PaperOrder.objects.filter(account=account)
    order = Order.objects.get(execution=execution)
    assert (order.status, order.broker_order_id, order.client_order_id) == (
        "filled", f"P{paper_order.pk}", paper_order.client_order_id)
    [position] = Position.objects.filter(account=account)
    assert position.qty == 10
