"""Live-updates benchmark: 500 websocket clients on ``ws/live/``, time from a price change to each client.

Run from the project root::

    .venv/bin/python bench/ws_bench.py            # about a minute, figures + bench/results/ws-*.json

Production mode: PostgreSQL (a dedicated database ``tradeflow_wsbench``, dropped and created), Redis (a
dedicated db, flushed) as the channel layer, ``uvicorn tradeflow.asgi:application`` with 2 workers.

1. N users, each with a paper account and one open position (symbols spread over a few tickers), and a logged-in
   session made with Django's ``SessionStore`` (the cookie a browser would hold).
2. N websocket clients connect with that cookie and wait for their snapshot.
3. Each round, a feed process (this script, ``--feed-only``; separate so it does not share a GIL with the
   clients, like the beat worker) moves every quote (one UPDATE) and runs the price feed service
   (``brokers.services.prices.prices_mark``) against the same database and Redis, as the beat task would.
   Every client records when its "prices" event arrives. Latency = arrival − the moment just before the quotes
   were updated (the change); also reported: arrival − the event's ``ts`` (when the feed read the prices).

Everything is bounded (``--max-seconds`` watchdog); the server is stopped, the database dropped and the Redis db
flushed on exit, Ctrl-C or error. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webhook_bench import (  # noqa: E402
    HOST,
    PG_ADMIN_URL,
    PY,
    RESULTS,
    ROOT,
    VENV_BIN,
    Deadline,
    Procs,
    _children,
    _proc_cpu,
    fmt,
    free_port,
    http_get,
    log,
    run_checked,
    summary,
)

DB_NAME = "tradeflow_wsbench"
SYMBOLS = [f"WSB{i:02d}" for i in range(20)]


def bench_env(args) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_"))}
    env.update({
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
        "SECRET_KEY": os.urandom(32).hex(),
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": f"{HOST},localhost",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "tradeflow.settings",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("TASKS_IN_THREAD", None)
    return env


def reset_stores(env: dict[str, str], *, create: bool) -> None:
    import psycopg
    import redis

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()


def seed(n: int) -> list[str]:
    """N users with one open paper position each; returns their session keys."""
    from decimal import Decimal
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    from accounts.models import User
    from brokers.adapters.paper import quote_set
    from brokers.models import Position
    from brokers.services import account_create

    store = import_module(settings.SESSION_ENGINE).SessionStore
    for symbol in SYMBOLS:
        quote_set(broker="paper", symbol=symbol, price=Decimal("100"))
    keys, positions = [], []
    for i in range(n):
        user = User.objects.create_user(f"ws{i}@bench.local")
        account, _ = account_create(owner=user, label=f"WS {i}")
        positions.append(Position(account=account, symbol=SYMBOLS[i % len(SYMBOLS)], side="long", qty=Decimal("1"),
                                  avg_price=Decimal("100"), last_price=Decimal("100")))
        session = store()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys.append(session.session_key)
    Position.objects.bulk_create(positions)
    return keys


def move_quotes(round_no: int) -> float:
    """Every quote moves (so every position is repriced); returns the moment of the change (epoch seconds)."""
    from decimal import Decimal

    from django.utils import timezone

    from brokers.models import Quote
    from brokers.services.prices import display_write

    changed_at = time.time()
    # The market moving (an exchange's tick, in production not a write of ours at all): written like the demo
    # feed's quotes, without waiting for the disk flush, whose stalls (p99 ~300 ms here) are not on the path.
    with display_write():
        Quote.objects.filter(broker="paper", symbol__in=SYMBOLS).update(
            price=Decimal("100") + Decimal(round_no % 50 + 1) / 10, updated_at=timezone.now())
    return changed_at


class Client(asyncio.Protocol):
    """One dashboard's socket, read the way a browser does it: frames parsed as they arrive, nothing else.

    A minimal RFC 6455 client (handshake, unfragmented server frames, pong to the server's pings) rather than
    the ``websockets`` library: the 500 "browsers" share the server's two cores here, and the library's
    per-message machinery (assembler, queues, futures) cost the clients more CPU per tick than the server
    spent writing the same messages, which is a cost no real browser puts on the server's machine."""

    def __init__(self, key: str):
        self.key = key
        self.arrivals: list[tuple[float, float]] = []  # (arrival, event ts)
        self.snapshot = asyncio.Event()
        self.errors = 0
        self.buffer = b""
        self.handshaken = False
        self.transport = None
        self.closed: asyncio.Future | None = None

    async def run(self, port: int, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self, HOST, port), timeout=20)
            key = base64.b64encode(os.urandom(16)).decode()
            self.transport.write((f"GET /ws/live/ HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                                  f"Origin: http://{HOST}:{port}\r\nCookie: sessionid={self.key}\r\n\r\n").encode())
            await asyncio.shield(self.closed)
            if not stop.is_set():
                raise ConnectionError("closed by the server")
        except asyncio.CancelledError:
            if self.transport is not None:
                self.transport.close()
        except Exception:  # noqa: BLE001 - counted and reported; the run goes on with the others
            self.errors += 1
            self.snapshot.set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buffer + data
        if not self.handshaken:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = buf
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.transport.close()
                return
            self.handshaken, buf = True, rest
        while len(buf) >= 2:
            opcode, length, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, at = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + length:
                break
            payload, buf = buf[at:at + length], buf[at + length:]
            if opcode == 1:
                event = json.loads(payload)
                if event["kind"] == "snapshot":
                    self.snapshot.set()
                elif event["kind"] == "prices":
                    self.arrivals.append((now, event["ts"]))
            elif opcode == 9:  # ping: a pong, masked with a zero key as a client must mask
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif opcode == 8:
                self.transport.close()
        self.buffer = buf


async def clients_only(args) -> int:
    """One client process (``--clients-only``): connect its share of the sessions, say READY, record every
    "prices" event until STOP arrives on stdin, then print the arrivals as JSON."""
    keys = json.loads(Path(args.keys_file).read_text())
    stop = asyncio.Event()
    clients = [Client(k) for k in keys]
    tasks = []
    for i in range(0, len(clients), 50):  # connect in batches, like users arriving, not one burst
        tasks += [asyncio.create_task(c.run(args.port, stop)) for c in clients[i:i + 50]]
        await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(*(c.snapshot.wait() for c in clients)), timeout=60)
    print("READY", flush=True)
    cpu_ready = time.process_time()
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()  # STOP
    cpu_used = time.process_time() - cpu_ready
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print("RESULT " + json.dumps({"cpu_s": cpu_used, "errors": sum(c.errors for c in clients),
                                  "arrivals": [a for c in clients if not c.errors for a in c.arrivals]}), flush=True)
    return 0


async def drive(args, env: dict[str, str], port: int, keys: list[str], run_dir: Path, server_pid: int) -> dict:
    """The clients run in ``--client-procs`` processes: 500 browsers are 500 machines, and one Python process
    reading 500 sockets in turn would add its own queue to the figure (reported: how many processes)."""
    t0 = time.monotonic()
    share = max(1, -(-len(keys) // args.client_procs))
    clients = []
    for n, i in enumerate(range(0, len(keys), share)):
        keys_file = run_dir / f"keys-{n}.json"
        keys_file.write_text(json.dumps(keys[i:i + share]))
        clients.append(await asyncio.create_subprocess_exec(
            PY, str(Path(__file__).resolve()), "--clients-only", "--port", str(port), "--keys-file", str(keys_file),
            env=env, cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**26))
    for proc in clients:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=90)
        if not line.startswith(b"READY"):
            raise RuntimeError(f"a client process did not connect: {line[:200]!r}")
    connect_s = time.monotonic() - t0
    log(f"{len(keys)} clients in {len(clients)} processes connected with their snapshot in {connect_s:.1f} s")
    # The feed runs in its own process, as the beat worker would: not sharing a GIL with the clients.
    feed = await asyncio.create_subprocess_exec(
        PY, str(Path(__file__).resolve()), "--feed-only", "--rounds", str(args.rounds), "--interval",
        str(args.interval), "--redis-db", str(args.redis_db), env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    server_pids = lambda: [server_pid, *_children(server_pid)]  # noqa: E731
    server_before = {pid: _proc_cpu(pid, reaped=False) for pid in server_pids()}
    feed_cpu = None
    rounds: list[tuple[float, float, float]] = []  # (change, feed start, feed end)
    to_publish: list[float] = []  # feed start → the tick handed to the channel layer
    async for line in feed.stdout:
        if line.startswith(b"ROUND "):
            r = json.loads(line[6:])
            assert r["changed"] == len(keys), f"round {r}: expected {len(keys)} positions repriced"
            rounds.append((r["changed_at"], r["start"], r["end"]))
            if r.get("published"):
                to_publish.append((r["published"] - r["start"]) * 1000)
        elif line.startswith(b"FEEDCPU "):
            feed_cpu = json.loads(line[8:])["cpu_s"]
    server_cpu = sum(_proc_cpu(pid, reaped=False) - server_before.get(pid, 0.0) for pid in server_pids())
    await feed.wait()
    if feed.returncode:
        raise RuntimeError(f"the feed process failed ({feed.returncode})")
    await asyncio.sleep(3)  # stragglers
    arrivals, errors, clients_cpu = [], 0, 0.0
    for proc in clients:
        proc.stdin.write(b"STOP\n")
        await proc.stdin.drain()
        async for line in proc.stdout:
            if line.startswith(b"RESULT "):
                got = json.loads(line[7:])
                arrivals += got["arrivals"]
                clients_cpu += got["cpu_s"]
                errors += got["errors"]
        await proc.wait()
    connected = len(keys) - errors
    expected = connected * len(rounds)
    from_change, from_ts = [], []
    first = min((rc for rc, _, _ in rounds), default=0)
    arrivals = [(arrival, ts) for arrival, ts in arrivals if ts >= first]  # not the feed's warm-up tick
    for arrival, ts in arrivals:
        change = max((rc for rc, _, _ in rounds if rc <= ts), default=None)
        if change is not None:
            from_change.append((arrival - change) * 1000)
        from_ts.append((arrival - ts) * 1000)
    feed_ms = [(end - start) * 1000 for _, start, end in rounds]
    # Per round: where its time went (change → the feed read the quotes → the slowest client), so one slow round
    # is told apart from a slow path.
    per_round: dict[float, list[float]] = {}
    for arrival, ts in arrivals:
        per_round.setdefault(ts, []).append(arrival)
    changes = sorted(rc for rc, _, _ in rounds)
    round_rows = []
    for ts, got in sorted(per_round.items()):
        change = max((rc for rc in changes if rc <= ts), default=ts)
        got.sort()
        round_rows.append({"change_to_read_ms": round((ts - change) * 1000, 2),
                           "read_to_first_ms": round((got[0] - ts) * 1000, 2),
                           "read_to_p50_ms": round((got[len(got) // 2] - ts) * 1000, 2),
                           "read_to_last_ms": round((got[-1] - ts) * 1000, 2)})
    ticks = max(len(rounds), 1)
    cpu = {"server_ms_per_tick": round(server_cpu * 1000 / ticks, 1),
           "clients_ms_per_tick": round(clients_cpu * 1000 / ticks, 1),
           "feed_ms_per_tick": None if feed_cpu is None else round(feed_cpu * 1000 / ticks, 1)}
    return {"cpu": cpu, "per_round": round_rows,
            "clients": len(keys), "client_procs": len(clients), "connected": connected,
            "connect_seconds": round(connect_s, 2), "rounds": len(rounds), "events_expected": expected,
            "events_received": len(from_ts), "events_missing": expected - len(from_ts),
            "latency_from_change_ms": summary(from_change), "latency_from_event_ts_ms": summary(from_ts),
            "feed_run_ms": summary(feed_ms), "feed_to_published_ms": summary(to_publish)}


def feed_only(args) -> int:
    """The price changes, run in a separate process with the server's environment (see ``drive``)."""
    import django

    django.setup()
    from brokers.services import prices
    from tradeflow.startup import freeze_startup_objects

    freeze_startup_objects()  # as the Celery worker that runs the feed task does at start
    published: list[float] = []  # when the feed had handed the tick to the channel layer
    publish = prices.publish_prices

    def timed_publish(*a, **kw):
        publish(*a, **kw)
        published.append(time.time())

    prices.publish_prices = timed_publish
    # One tick first, not measured: a beat worker is long-lived, and the first tick of a process pays for its
    # channel-layer connections and the ORM's first queries.
    move_quotes(args.rounds)
    prices.prices_mark()
    time.sleep(args.interval)
    cpu_start = time.process_time()
    for r in range(args.rounds):
        time.sleep(args.interval)
        changed_at = move_quotes(r)
        start = time.time()
        changed = len(prices.prices_mark().changed)
        print("ROUND " + json.dumps({"changed_at": changed_at, "start": start, "end": time.time(),
                                     "published": published[-1] if published else None,
                                     "changed": changed}), flush=True)
    print("FEEDCPU " + json.dumps({"cpu_s": time.process_time() - cpu_start}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=60, help="price changes (p99 of 20 is one slow tick)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between price changes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis-db", type=int, default=11)
    parser.add_argument("--max-seconds", type=int, default=120)
    parser.add_argument("--client-procs", type=int, default=2, help="processes the clients are spread over")
    parser.add_argument("--feed-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--keys-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed_only:
        return feed_only(args)
    if args.clients_only:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
        return asyncio.run(clients_only(args))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    env = bench_env(args)
    procs = Procs()
    run_dir = Path(tempfile.mkdtemp(prefix="ws-bench-"))

    def on_alarm(*_):
        raise Deadline(f"the run exceeded --max-seconds={args.max_seconds}")

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.max_seconds)
    try:
        log(f"resetting database {DB_NAME} and Redis db {args.redis_db}")
        reset_stores(env, create=True)
        run_checked([PY, "manage.py", "migrate", "--noinput"], env, timeout=120)
        os.environ.update(env)  # this process runs the price feed against the same database and Redis
        import django

        django.setup()
        t = time.monotonic()
        keys = seed(args.clients)
        log(f"seeded {len(keys)} users with a position and a session in {time.monotonic() - t:.1f} s")
        port = free_port()
        procs.start("uvicorn", [str(VENV_BIN / "uvicorn"), "tradeflow.asgi:application", "--host", HOST, "--port",
                                str(port), "--workers", str(args.workers), "--no-access-log", "--log-level", "warning",
                                "--ws-per-message-deflate", "false"],  # as the Procfile
                    env, run_dir / "uvicorn.log")
        for _ in range(200):
            procs.check_alive()
            with contextlib.suppress(OSError):
                if http_get(port, "/livez")[0] == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("uvicorn did not answer /livez in 20 s")
        result = asyncio.run(drive(args, env, port, keys, run_dir, procs.pid("uvicorn")))
        result.update({"workers": args.workers, "interval_s": args.interval,
                       "when": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count()})
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"ws-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(result, indent=2))
        lc, lt, feed = result["latency_from_change_ms"], result["latency_from_event_ts_ms"], result["feed_run_ms"]
        print(f"\n{result['connected']}/{result['clients']} clients in {result['client_procs']} processes, "
              f"{result['rounds']} price changes, "
              f"{result['events_received']}/{result['events_expected']} events received "
              f"({result['events_missing']} missing)")
        print(f"price change -> client: p50 {fmt(lc.get('p50'), ' ms')}  p99 {fmt(lc.get('p99'), ' ms')}  "
              f"max {fmt(lc.get('max'), ' ms')}   (target p99 <= 100 ms)")
        print(f"feed read (event ts) -> client: p50 {fmt(lt.get('p50'), ' ms')}  p99 {fmt(lt.get('p99'), ' ms')}")
        print(f"feed run (read the marks, publish, store them): p50 {fmt(feed.get('p50'), ' ms')}"
              f"  max {fmt(feed.get('max'), ' ms')}; read + publish p50 "
              f"{fmt(result['feed_to_published_ms'].get('p50'), ' ms')}")
        print("CPU per tick, ms: server {server_ms_per_tick} (all uvicorn workers), feed {feed_ms_per_tick}, "
              "clients {clients_ms_per_tick} (all client processes)".format(**result["cpu"]))
        worst = sorted(result["per_round"], key=lambda r: -(r["change_to_read_ms"] + r["read_to_last_ms"]))[:3]
        print("slowest rounds (change→read, read→first/p50/last client, ms): " + "; ".join(
            f"{r['change_to_read_ms']:.0f}, {r['read_to_first_ms']:.0f}/{r['read_to_p50_ms']:.0f}/"
            f"{r['read_to_last_ms']:.0f}" for r in worst))
        print(f"results: {out.relative_to(ROOT)}")
        return 0 if lc.get("p99") is not None and lc["p99"] <= 100 and not result["events_missing"] else 1
    except (Deadline, KeyboardInterrupt) as exc:
        log(f"stopped: {exc or 'interrupted'}")
        return 2
    finally:
        signal.alarm(0)
        procs.stop_all()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        stopper = threading.Thread(target=reset_stores, args=(env,), kwargs={"create": False}, daemon=True)
        stopper.start()
        stopper.join(30)
        log(f"cleaned up (server logs: {run_dir})")


if __name__ == "__main__":
    sys.exit(main())
