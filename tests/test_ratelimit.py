"""The shared order-rate limiter: in memory (embedded mode) and on Redis (every process shares it)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from brokers import ratelimit
from brokers.adapters.base import BrokerTransient
from tests.protocol.kite_server import KiteServer

REPO = Path(__file__).resolve().parent.parent


def timed(backend, key, limits, n, timeout=10.0) -> list[float]:
    times = []
    for _ in range(n):
        ratelimit.acquire(key, limits, timeout, backend=backend)
        times.append(time.monotonic())
    return times


@pytest.fixture
def key():
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
def local():
    return ratelimit.LocalBackend()


@pytest.fixture
def redis_backend(settings, key):
    import redis

    client = redis.Redis.from_url(settings.TEST_REDIS_URL)
    backend = ratelimit.RedisBackend(client)
    yield backend
    backend.reset(key)
    client.close()


def check_admits_then_waits(backend, key):
    started = time.monotonic()
    times = timed(backend, key, [(5, 0.5)], 7)
    assert times[4] - started < 0.2  # the first five at once
    assert times[5] - started >= 0.45  # the sixth waits for the first to leave the window
    assert KiteServer.max_in_window(times, 0.45) <= 5


def check_timeout(backend, key):
    timed(backend, key, [(2, 5.0)], 2)
    started = time.monotonic()
    with pytest.raises(BrokerTransient) as excinfo:
        ratelimit.acquire(key, [(2, 5.0)], timeout=0.3, backend=backend)
    assert time.monotonic() - started < 0.2  # it does not sleep when the wait cannot fit the timeout
    assert excinfo.value.code == "rate_limited" and 4.0 < excinfo.value.retry_after <= 5.0
    assert "2 per 5s" in excinfo.value.message


def check_every_window_counts(backend, key):
    limits = [(3, 0.2), (4, 1.0)]
    started = time.monotonic()
    times = timed(backend, key, limits, 5)
    assert times[3] - started >= 0.18  # the short window
    assert times[4] - started >= 0.95  # the long window


def check_threads_share_it(backend, key):
    times: list[float] = []
    lock = threading.Lock()

    def worker():
        for t in timed(backend, key, [(10, 0.5)], 5):
            with lock:
                times.append(t)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(times) == 30
    # Timestamps are taken after acquire() returns, late by however long a busy machine takes to run
    # the thread again: allow 10 % of the window (an unlimited run puts all 30 in one window).
    assert KiteServer.max_in_window(times, 0.45) <= 10
    assert max(times) - started >= 1.0  # 30 calls at ≤ 10 per 0.5 s


CHECKS = [check_admits_then_waits, check_timeout, check_every_window_counts, check_threads_share_it]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_in_memory(local, key, check):
    check(local, key)


@pytest.mark.redis
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_on_redis(redis_backend, key, check):
    check(redis_backend, key)


def test_keys_are_independent(local):
    timed(local, "a", [(1, 5.0)], 1)
    started = time.monotonic()
    timed(local, "b", [(1, 5.0)], 1)
    assert time.monotonic() - started < 0.1


def test_the_local_memory_cache_means_the_in_process_limiter():
    assert ratelimit.default_backend() is ratelimit._local


@pytest.mark.redis
def test_a_redis_cache_means_the_redis_limiter(settings, key):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": settings.TEST_REDIS_URL}}
    backend = ratelimit.default_backend()
    assert isinstance(backend, ratelimit.RedisBackend)
    try:
        timed(backend, key, [(3, 2.0)], 3)
        windows = list(backend.client.scan_iter(match=f"{ratelimit.KEY_PREFIX}{{{key}}}:*"))
        assert len(windows) == 1 and 0 < backend.client.pttl(windows[0]) <= 2000  # windows expire on their own
    finally:
        backend.reset(key)


WORKER = """
import json, sys, time
import redis
sys.path.insert(0, sys.argv[1])
from brokers.ratelimit import RedisBackend, acquire
backend = RedisBackend(redis.Redis.from_url(sys.argv[2]))
start = float(sys.argv[4])
while time.time() < start:
    time.sleep(0.001)
times = []
for _ in range(12):
    acquire(sys.argv[3], [(10, 1.0)], timeout=30, backend=backend)
    times.append(time.time())
print(json.dumps(times))
"""


@pytest.mark.redis
def test_two_processes_share_one_limit_through_redis(settings, redis_backend, key):
    start = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(REPO), settings.TEST_REDIS_URL, key, str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    times = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        times += json.loads(out)
    assert len(times) == 24
    # Alone, each process would take its 12 in ~1 s; together they get 10 per second between them.
    assert KiteServer.max_in_window(times, 0.9) <= 10
    assert max(times) - start >= 2.0
