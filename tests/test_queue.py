"""The web process publishes a task's message itself (``tradeflow.queue.publish``): it must be the message Celery
would have sent, byte for byte apart from the ids, and land on the queue the worker reads."""

from __future__ import annotations

import base64
import json

import pytest
import redis
from django.conf import settings

from brokers.tasks import execution_run_task, executions_drain_task
from tests.test_integration_worker import _reset_connections
from tradeflow import queue

pytestmark = pytest.mark.redis


@pytest.fixture
def app():
    from tradeflow.celery import app

    saved = {key: app.conf[key] for key in ("broker_url", "task_always_eager", "task_default_queue")}
    app.conf.update(broker_url=settings.TEST_REDIS_URL, task_always_eager=False,
                    task_default_queue="tftest-queue-raw")
    _reset_connections(app)
    client = redis.Redis.from_url(settings.TEST_REDIS_URL)
    client.delete("tftest-queue-raw")
    yield app
    client.delete("tftest-queue-raw")
    app.conf.update(saved)
    _reset_connections(app)


def celery_sent(app, task, args):
    """What ``task.delay(*args)`` puts on the queue (popped back off it)."""
    task.delay(*args)
    client = redis.Redis.from_url(settings.TEST_REDIS_URL)
    return json.loads(client.rpop("tftest-queue-raw"))


def test_the_raw_message_is_the_one_celery_sends_with_its_own_ids(app):
    for task in (executions_drain_task, execution_run_task):
        theirs = celery_sent(app, task, (41,))
        key, payload = queue.message_for(task, (41,))
        ours = json.loads(payload)

        assert key == "tftest-queue-raw"
        assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(theirs["body"])) == [
            [41], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        ids = {"id", "root_id", "correlation_id", "delivery_tag", "origin"}
        strip = lambda part: {k: v for k, v in part.items() if k not in ids}  # noqa: E731
        assert strip(ours["headers"]) == strip(theirs["headers"])
        assert ours["headers"]["task"] == task.name and ours["headers"]["argsrepr"] == "(41,)"
        assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
        assert strip(ours["properties"]) == strip(theirs["properties"])
        assert {k: v for k, v in ours.items() if k not in ("body", "headers", "properties")} == {
            k: v for k, v in theirs.items() if k not in ("body", "headers", "properties")}


def test_publish_puts_one_message_on_the_workers_queue_per_call(app):
    client = redis.Redis.from_url(settings.TEST_REDIS_URL)
    queue.publish(executions_drain_task, (7,))
    queue.publish(executions_drain_task, (8,))
    messages = [json.loads(m) for m in client.lrange("tftest-queue-raw", 0, -1)]
    assert [json.loads(base64.b64decode(m["body"]))[0] for m in messages] == [[8], [7]]  # LPUSH: newest first
    assert len({m["headers"]["id"] for m in messages}) == 2


def test_a_flagged_publish_sends_one_message_until_the_task_clears_the_flag(app):
    client = redis.Redis.from_url(settings.TEST_REDIS_URL)
    flag = f"tf:queued:{executions_drain_task.name}:tftest-queue-raw"
    client.delete(flag)
    sent = [queue.publish(executions_drain_task, (n,), unless_queued=True) for n in range(5)]
    assert sent == [True, False, False, False, False]  # a burst: the first one's drain finds the other four
    assert client.llen("tftest-queue-raw") == 1 and 0 < client.ttl(flag) <= 5

    # The drain started (a worker took the message off that queue): what is stored now needs a new one.
    executions_drain_task.push_request(delivery_info={"routing_key": "tftest-queue-raw"}, is_eager=False)
    try:
        queue.queued_clear(executions_drain_task)
    finally:
        executions_drain_task.pop_request()
    assert queue.publish(executions_drain_task, (5,), unless_queued=True) is True
    assert client.llen("tftest-queue-raw") == 2
    client.delete(flag)
