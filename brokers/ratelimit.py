"""A shared sliding-window rate limiter, so a bot fan-out never trips a broker's 429.

``acquire("kite:orders:AB1234", [(10, 1.0), (400, 60.0)], timeout=5)`` returns once one more call fits
in every window (at most 10 in any 1 s and 400 in any 60 s), waiting if needed; past ``timeout`` it
raises ``BrokerTransient`` with ``retry_after``, which the execution task already retries with backoff.

Where the Django cache is Redis the windows live in Redis (one sorted set per window, checked and
updated by one Lua script using the Redis clock), so every web and worker process on every machine
shares them. Otherwise (embedded mode, local-memory cache) they live in this process's memory, which
is exact for the single process embedded mode runs in.

It is a sliding *log*, not a fixed window: no burst of 2 × limit can straddle a window boundary.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence

from brokers.adapters.base import BrokerTransient

Limits = Sequence[tuple[int, float]]  # (max calls, window seconds)

KEY_PREFIX = "tf:rl:"

# KEYS: one sorted set per window. ARGV: member, then (limit, window in µs) per key.
# Returns 0 when the call was admitted (and recorded in every window), else the microseconds until
# the oldest call that blocks it leaves its window. Times are the Redis server's clock, in µs (exact
# in a Lua double), so every process measures the same windows.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local n = redis.call('ZCARD', key)
  if n >= limit then
    local blocker = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    local w = tonumber(blocker[2]) + window - now
    if w > wait then wait = w end
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[2 * i + 1]) / 1000))
end
return 0
"""


class RedisBackend:
    """Windows in Redis; ``client`` is a ``redis.Redis``."""

    def __init__(self, client):
        self.client = client
        self._script = client.register_script(_LUA)

    def try_acquire(self, key: str, limits: Limits) -> float:
        # A hash tag keeps every window of one key in one cluster slot (the script touches them all).
        keys = [f"{KEY_PREFIX}{{{key}}}:{count}/{period}" for count, period in limits]
        args: list = [uuid.uuid4().hex]
        for count, period in limits:
            args += [int(count), max(int(period * 1_000_000), 1)]
        return int(self._script(keys=keys, args=args)) / 1_000_000

    def reset(self, key: str) -> None:
        for name in self.client.scan_iter(match=f"{KEY_PREFIX}{{{key}}}:*"):
            self.client.delete(name)


class LocalBackend:
    """Windows in this process (thread-safe); exact for one process, blind to others."""

    def __init__(self):
        self._lock = threading.Lock()
        self._log: dict[tuple[str, int, float], deque[float]] = {}

    def try_acquire(self, key: str, limits: Limits) -> float:
        with self._lock:
            now = time.monotonic()
            wait = 0.0
            logs = []
            for count, period in limits:
                log = self._log.setdefault((key, count, period), deque())
                while log and log[0] <= now - period:
                    log.popleft()
                if len(log) >= count:
                    wait = max(wait, log[len(log) - count] + period - now)
                logs.append(log)
            if wait > 0:
                return wait
            for log in logs:
                log.append(now)
            return 0.0

    def reset(self, key: str) -> None:
        with self._lock:
            for name in [k for k in self._log if k[0] == key]:
                del self._log[name]


_local = LocalBackend()
_redis_backends: dict[tuple, RedisBackend] = {}
_redis_lock = threading.Lock()


def default_backend() -> RedisBackend | LocalBackend:
    """Redis when Django's default cache is Redis, else this process's memory."""
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    cache = caches["default"]  # the backend itself (``django.core.cache.cache`` is a proxy)
    if not isinstance(cache, RedisCache):
        return _local
    servers = tuple(cache._servers)
    with _redis_lock:
        backend = _redis_backends.get(servers)
        if backend is None:
            backend = _redis_backends[servers] = RedisBackend(cache._cache.get_client(write=True))
    return backend


def acquire(key: str, limits: Iterable[tuple[int, float]], timeout: float, *, backend=None) -> float:
    """Wait until one more call under ``key`` fits every window; return the seconds waited.

    Raises ``BrokerTransient`` (with ``retry_after``) when that would take longer than ``timeout``.
    """
    limits = [(int(count), float(period)) for count, period in limits]
    backend = backend or default_backend()
    started = time.monotonic()
    while True:
        wait = backend.try_acquire(key, limits)
        if wait <= 0:
            return time.monotonic() - started
        waited = time.monotonic() - started
        if waited + wait > timeout:
            described = ", ".join(f"{count} per {period:g}s" for count, period in limits)
            raise BrokerTransient(
                f"Rate limit reached for {key} ({described}); retry in {wait:.2f}s",
                code="rate_limited", retry_after=round(wait, 3),
            )
        # A little jitter, so waiters woken together do not all race for the same freed slot.
        time.sleep(wait + random.uniform(0, 0.005))
