"""Push executions and positions to the customer's and the admins' websocket groups."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from decimal import Decimal

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)
ADMINS_GROUP = "live.admins"
PRICE_SHARDS = 16  # price ticks go to user_id % 16 groups (smaller messages, published in parallel)
PRICE_ADMINS_GROUP = "live.prices.admins"  # the staff's tick (every row); read by each process's hub (brokers.hub)


def user_group(user_id: int) -> str:
    return f"live.user.{user_id}"


def prices_group(user_id: int) -> str:
    return f"live.prices.{int(user_id) % PRICE_SHARDS}"


def execution_event(execution) -> dict:
    return {
        "kind": "execution",
        "id": execution.pk,
        "account_id": execution.account_id,
        "signal_id": str(execution.signal_id) if execution.signal_id else None,
        "status": execution.status,
        "reason_code": execution.reason_code,
        "reason": execution.reason,
        "symbol": execution.intent.get("symbol", ""),
        "latency_ms": str(execution.latency_ms) if execution.latency_ms is not None else None,
        # For the dashboards' tables and the admin page's per-bot counters; all already loaded, no extra query.
        "account": execution.account.label,
        # The admin live page names the customer (the customer's own event carries their own address). Loaded with
        # the execution on the engine's path; elsewhere one query.
        "owner": execution.account.owner.email,
        "bot_id": (execution.intent.get("bot") or {}).get("id"),
        "created_at": execution.created_at.isoformat() if execution.created_at else None,
    }


def position_event(position) -> dict:
    """A position as the dashboard shows it (the snapshot's rows and the "position" events)."""
    return {
        "kind": "position", "id": position.pk, "account_id": position.account_id, "account": position.account.label,
        "currency": position.account.currency, "symbol": position.symbol, "side": position.side,
        "qty": num(position.qty), "avg_price": num(position.avg_price), "last_price": num(position.last_price),
        "unrealized_pnl": num(position.unrealized_pnl), "realized_pnl": num(position.realized_pnl),
        "status": position.status, "stop_loss": num(position.stop_loss), "take_profit": num(position.take_profit),
    }


def num(value) -> str | None:
    """A decimal as plain text without trailing zeros ("10", not "10.00000000"): a row reads the same whether
    it was just booked or loaded from the database."""
    return None if value is None else format(Decimal(value).normalize(), "f")


def publish_positions_on_commit(owner_id: int, positions) -> None:
    """After the fill's transaction commits (a rolled-back fill must never reach a screen), push the rows
    as they are now: the state is captured here, so a later change cannot leak into this event."""
    publish_on_commit([(owner_id, position_event(p)) for p in positions])


def publish_on_commit(events: list[tuple[int, dict]]) -> None:
    """``publish_many`` once the current transaction commits (never for a rolled-back change). Inside a transaction
    the events join those already waiting for the same commit: one hand-off to the publishing loop per commit
    (a batch's fills and outcomes together), not one per call."""
    if not events:
        return
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        publish_many(events)
        return
    # Joined only at the same savepoint depth, while its callback still waits (Django drops the callbacks of a
    # rolled-back savepoint or transaction): events of a savepoint that may roll back get a callback of their own.
    waiting_ids = {id(func) for _, func, _ in connection.run_on_commit}
    by_depth = {depth: pending for depth, pending in getattr(connection, "_live_pending", {}).items()
                if id(pending[1]) in waiting_ids}  # (what committed or rolled back is gone)
    connection._live_pending = by_depth
    depth = tuple(connection.savepoint_ids)
    pending = by_depth.get(depth)
    if pending is None:
        waiting: list[tuple[int, dict]] = []
        pending = by_depth[depth] = (waiting, lambda: publish_many(waiting))
        transaction.on_commit(pending[1])
    pending[0].extend(events)


_loops: dict[int, asyncio.AbstractEventLoop] = {}
_local = threading.local()


def use_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Publish from this thread onto ``loop`` (the in-memory layer of an embedded server lives on its loop)."""
    _local.loop = loop
_loops_lock = threading.Lock()


def _publisher_loop() -> asyncio.AbstractEventLoop:
    """One event loop thread per process for publishing from sync code (Celery tasks).

    channels_redis keeps a connection pool per event loop; ``async_to_sync`` makes a new loop per call,
    so every event paid for a new Redis connection (measured: 4 ms of CPU per execution, 0.3 ms with this).
    """
    pid = os.getpid()
    with _loops_lock:
        loop = _loops.get(pid)
        if loop is None:
            loop = _loops[pid] = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True, name="live-publisher").start()
    return loop


def _deliver(layer, func, *args, timeout: float) -> None:
    """Run ``func(layer, *args)`` (a coroutine function) on the loop that publishes from this thread."""
    loop = getattr(_local, "loop", None)
    if loop is None and not isinstance(layer, InMemoryChannelLayer):  # the in-memory layer: asgiref finds its loop
        loop = _publisher_loop()
    if loop is not None:
        asyncio.run_coroutine_threadsafe(func(layer, *args), loop).result(timeout=timeout)
    else:
        async_to_sync(func)(layer, *args)


def publish(user_id: int, event: dict) -> None:
    """Best effort: a dashboard that misses an event reloads its snapshot; trading must not wait on it."""
    publish_many([(user_id, event)])


def publish_many(events: list[tuple[int, dict]]) -> None:
    """``publish`` for many (user id, event) pairs: on the Redis pub/sub layer in one pipelined round trip from this
    thread (``_publish_direct``), elsewhere in one hand-off to the publishing loop, sent concurrently."""
    layer = get_channel_layer()
    if layer is None or not events:
        return
    messages = []
    for user_id, event in events:
        message = {"type": "live.event", "event": event}
        messages += [(user_group(user_id), message), (ADMINS_GROUP, message)]
    try:
        if not _publish_direct(layer, messages):
            _deliver(layer, _send_many, messages, timeout=2 + len(events) / 500)
    except Exception:  # noqa: BLE001 - the event is informational; the database holds the truth
        log.warning("could not publish %d live event(s) (%s)", len(events), events[0][1].get("kind"), exc_info=True)


_direct: dict[tuple[int, int], tuple] = {}  # (pid, id(layer)) → (layer, publisher or None)


def _direct_publisher(layer) -> tuple | None:
    """(Redis client, group channel prefix) for channels_redis' pub/sub layer on one Redis host, else None. Its
    ``group_send`` is a PUBLISH of the layer's own serialization on ``<prefix>__group__<group>``; doing that here
    with a plain client skips the hop to an event loop thread (about half of a batch's publishing CPU)."""
    key = (os.getpid(), id(layer))
    cached = _direct.get(key)
    if cached is None or cached[0] is not layer:  # a new layer (settings changed): look again
        found = None
        try:
            from channels_redis.pubsub import RedisPubSubChannelLayer

            config = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
            hosts = config.get("hosts") or []
            if isinstance(layer, RedisPubSubChannelLayer) and len(hosts) == 1 and isinstance(hosts[0], str):
                from tradeflow.cache import redis_client

                found = (redis_client(hosts[0]), f"{config.get('prefix', 'asgi')}__group__")
        except ImportError:  # pragma: no cover - channels_redis is a requirement
            found = None
        cached = _direct[key] = (layer, found)
    return cached[1]


def _publish_direct(layer, messages: list[tuple[str, dict]]) -> bool:
    publisher = _direct_publisher(layer)
    if publisher is None:
        return False
    client, prefix = publisher
    pipe = client.pipeline(transaction=False)
    for group, message in messages:
        pipe.publish(prefix + group, layer.serialize(message))
    pipe.execute()
    return True


def publish_execution(execution) -> None:
    publish(execution.account.owner_id, execution_event(execution))


SEND_CONCURRENCY = 32  # group sends in flight at once (the Redis connection pool has a size)


async def _send_many(layer, messages: list[tuple[str, dict]]) -> None:
    gate = asyncio.Semaphore(SEND_CONCURRENCY)

    async def send(group: str, message: dict) -> None:
        async with gate:
            await layer.group_send(group, message)

    await asyncio.gather(*(send(group, message) for group, message in messages))


_compact = json.JSONEncoder(separators=(",", ":")).encode  # one encoder for every user's tick, not one per call


def prices_text(ts: float, rows: list[dict]) -> str:
    return _compact({"kind": "prices", "ts": ts, "positions": rows})


def publish_prices(rows_by_user: dict[int, list[dict]], *, ts: float | None = None) -> None:
    """A price tick: one message per shard group (``prices_group``) holding its users' repriced rows, and one
    with all rows for the admins. Each server process's hub (``brokers.hub``) writes each user's text to that
    user's sockets only, so a customer never receives another's figures.

    Why shards: one group send per user cost ~0.15 ms each (500 users: the last waited 75 ms); a few messages
    are published in parallel and stay small. ``ts``: when the prices were read.
    """
    layer = get_channel_layer()
    if layer is None or not rows_by_user:
        return
    ts = ts if ts is not None else time.time()
    # Each user's event is JSON text already: every socket in a shard decodes the shard's message, and a few
    # strings decode far faster than nested rows; the socket sends its text as it is (no encoding per socket).
    shards: dict[str, dict[str, str]] = {}
    for uid, rows in rows_by_user.items():
        shards.setdefault(prices_group(uid), {})[str(uid)] = prices_text(ts, rows)
    messages = [(group, {"type": "live.prices", "by_user": by_user}) for group, by_user in shards.items()]
    messages.append((PRICE_ADMINS_GROUP, {"type": "live.prices", "admins": True, "text": prices_text(
        ts, [row for rows in rows_by_user.values() for row in rows])}))
    try:
        _deliver(layer, _send_many, messages, timeout=5)
    except Exception:  # noqa: BLE001 - marks are in the database; the next tick sends fresh ones
        log.warning("could not publish prices for %d users", len(rows_by_user), exc_info=True)
