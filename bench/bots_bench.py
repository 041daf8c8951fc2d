"""Bot fan-out benchmark: one alert to a bot with 1,000 subscribers on the local Binance, 50 ms per broker call.

Run from the project root::

    .venv/bin/python bench/bots_bench.py        # about a minute; figures + bench/results/bots-<time>.json

Production mode on this machine: PostgreSQL database ``tradeflow_botbench`` (dropped and created), Redis db 12
(flushed), ``uvicorn`` and real Celery workers (``--workers`` processes, ``--pool threads`` × ``--concurrency``
by default). The Binance protocol server (``tests/protocol/binance_server.py``) runs in this process on 127.0.0.1
with one account per subscriber and ``--latency-ms`` added to every call; its request-weight limit is raised so
the run measures TradeFlow, not Binance's per-IP budget.

Measured: the webhook's answer; time from sending the alert to the last main-order acknowledgement; the
per-subscriber latency (``Execution.latency_ms``: webhook receipt → main-order ack) p50/p99/max; the orders the
server received (must be exactly one main order per subscriber) and the end state. Every loop is bounded;
``--max-seconds`` is a watchdog; servers and workers are stopped on exit, error or Ctrl-C. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VENV_BIN = ROOT / ".venv" / "bin"
PY = str(VENV_BIN / "python")
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "tradeflow_botbench"
ORDER, ALGO = "/fapi/v1/order", "/fapi/v1/algoOrder"
TERMINAL = ("filled", "placed", "rejected", "failed")

SETUP_SCRIPT = """
import json, sys
from decimal import Decimal
from accounts.models import TradingSettings, User
from bots.models import Subscription
from bots.services import bot_create
from brokers.models import BrokerAccount
keys = json.load(open({keys_file!r}))
def bot_with(name, accounts):
    bot, secret = bot_create(name=name, market_type="futures", broker="binance", default_leverage=10,
                             default_margin=Decimal("100"), default_stop_loss_pct=Decimal("1"),
                             default_take_profit_pct=Decimal("2"), symbols="BTCUSDT, ETHUSDT",
                             rate_limit="1000/m")
    Subscription.objects.bulk_create([Subscription(user_id=a.owner_id, bot=bot, account=a) for a in accounts])
    return {{"path": bot.webhook_path, "secret": secret, "id": bot.pk}}
users = User.objects.bulk_create([User(email=f"sub{{i}}@bench.local", password="!") for i in range(len(keys))])
TradingSettings.objects.bulk_create([TradingSettings(user=u) for u in users])
# What sign-up creates for every user (billing/signals.py), which bulk_create skips: the trial's billing record.
from datetime import timedelta
from django.conf import settings
from django.utils import timezone
from billing.models import BillingAccount
from billing.services import trial_plan
now, plan = timezone.now(), trial_plan()
BillingAccount.objects.bulk_create([BillingAccount(user=u, plan=plan, status="trialing", trial_started_at=now,
                                                   trial_ends_at=now + timedelta(days=settings.BILLING_TRIAL_DAYS))
                                    for u in users])
if {paper}:  # paper-mode accounts of the bot's broker: the built-in paper broker fills them
    accounts = BrokerAccount.objects.bulk_create([
        BrokerAccount(owner=u, label=f"Paper {{i}}", broker="binance", mode="paper", currency="USDT",
                      paper_capital=Decimal("100000"), balance=Decimal("100000"), equity=Decimal("100000"))
        for i, u in enumerate(users)])
else:
    accounts = BrokerAccount.objects.bulk_create([
        BrokerAccount(owner=u, label=f"Binance {{i}}", broker="binance", mode="live", currency="USDT",
                      api_key=k["key"], api_secret=k["secret"], options={{"market": "futures"}})
        for i, (u, k) in enumerate(zip(users, keys))])
warm, n = {warm}, len(accounts) - {warm}
setup = {{"warm": bot_with("Warm-up", accounts[n:]), "bot": bot_with("Bench", accounts[:n])}}
print("BENCH_SETUP " + json.dumps(setup))
"""


class Deadline(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http(port: int, method: str, path: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\nContent-Length: "
                  f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        data = b""
        for _ in range(10000):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


class Procs:
    """Server processes, each in its own session so its whole tree can be stopped."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen, object]] = []

    def start(self, name: str, cmd: list[str], env: dict, logfile: Path) -> None:
        fh = open(logfile, "wb")  # noqa: SIM115 - closed in stop_all
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.items.append((name, proc, fh))

    def check_alive(self) -> None:
        for name, proc, _ in self.items:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see its log in the run directory")

    def stop_all(self) -> None:
        for _, proc, _ in self.items:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 10
        for _, proc, fh in self.items:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, end - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            fh.close()
        self.items.clear()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants (bounded walk of /proc)."""
    total, todo, seen = 0.0, [pid], 0
    while todo and seen < 500:
        current, seen = todo.pop(), seen + 1
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{current}/stat") as fh:
                total += sum(int(x) for x in fh.read().rsplit(")", 1)[1].split()[11:13]) / CLK_TCK
            with open(f"/proc/{current}/task/{current}/children") as fh:
                todo.extend(int(x) for x in fh.read().split())
    return total


def machine_cpu() -> float:
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def named_cpu(prefix: str) -> float:
    """CPU seconds of every process whose name starts with ``prefix`` (PostgreSQL backends, Redis)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/comm") as fh:
                    if not fh.read().startswith(prefix):
                        continue
                with open(f"/proc/{entry}/stat") as fh:
                    total += sum(int(x) for x in fh.read().rsplit(")", 1)[1].split()[11:13]) / CLK_TCK
    return total


def cpu_snapshot(procs: Procs) -> dict[str, float]:
    snap = {name: tree_cpu(proc.pid) for name, proc, _ in procs.items}
    snap["postgres (all databases)"] = named_cpu("postgres")
    snap["redis"] = named_cpu("redis-server")
    snap["bench+binance_server"] = time.process_time()
    snap["machine"] = machine_cpu()
    return snap


def pg_free_connections() -> int:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        total = int(conn.execute("SHOW max_connections").fetchone()[0])
        used = conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0]
    return total - used - 3  # superuser_reserved_connections


def reset_stores(redis_url: str) -> None:
    import psycopg
    import redis

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    redis.Redis.from_url(redis_url).flushdb()


def run_checked(cmd: list[str], env: dict, timeout: float) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def query(sql: str, *params) -> list[tuple]:
    import psycopg

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}", autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def fire(port: int, bot: dict, alert_id: str, symbol: str) -> tuple[float, int, dict, float]:
    body = json.dumps({"ticker": symbol, "action": "buy", "secret": bot["secret"], "price": 95234.5,
                       "id": alert_id}).encode()
    sent = time.time()
    status, payload = http(port, "POST", f"/api/v1/bots/webhook/master/{bot['path']}", body)
    return sent, status, json.loads(payload), (time.time() - sent) * 1000


def wait_done(signal_id: str, expected: int, limit: float) -> float:
    """Seconds until every execution of the signal is terminal (bounded by ``limit``)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        done = query("SELECT count(*) FROM brokers_execution WHERE signal_id = %s AND status = ANY(%s)",
                     signal_id, list(TERMINAL))[0][0]
        if done >= expected:
            return time.monotonic() - start
        time.sleep(0.1)
    return -1.0


def main() -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--warm-subscribers", type=int, default=400,
                        help="a warm-up alert first: 4 batches, so every worker process has run one")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added to every Binance call")
    parser.add_argument("--broker", choices=("binance", "paper"), default="binance",
                        help="subscribers on the local Binance (default) or on paper accounts")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes")
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--concurrency", type=int, default=2, help="per worker process")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="BOT_BATCH_SIZE (subscribers per batch task; 0: one task per subscriber)")
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument("--max-seconds", type=int, default=300)
    args = parser.parse_args()
    if not (1 <= args.subscribers <= 5000 and 1 <= args.warm_subscribers <= 500 and args.concurrency <= 500
            and args.workers <= 8):
        parser.error("out of the bounded range")

    from cryptography.fernet import Fernet

    from tests.protocol.binance_server import BinanceServer

    started = datetime.now(UTC)
    run_id = started.strftime("%Y%m%d-%H%M%S")
    run_dir = RESULTS / f"bots-{run_id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    procs, server = Procs(), None

    def on_alarm(_signum, _frame):
        raise Deadline(f"the run exceeded --max-seconds={args.max_seconds}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.alarm(args.max_seconds)
    try:
        need = args.workers * args.concurrency + 10
        free = pg_free_connections()
        log(f"PostgreSQL: {free} free connections; this run needs about {need}")
        if free < need:
            raise RuntimeError(f"PostgreSQL has {free} free connections, the workers need ~{need}: lower "
                               "--concurrency or wait for other runs to finish")
        with open("/proc/loadavg") as fh:
            load = fh.read().split()[0]
        log(f"machine load average (1 min): {load} on {os.cpu_count()} cores")

        server = BinanceServer().__enter__()
        server.weight_limit = {"spot": 10**9, "futures": 10**9}
        total = args.subscribers + args.warm_subscribers
        keys = [dict(zip(("key", "secret"), server.add_account(), strict=True)) for _ in range(total)]
        server.fault("latency", delay=args.latency_ms / 1000, times=10**9)
        redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_"))}
        env.update({
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}", "REDIS_URL": redis_url,
            "SECRET_KEY": secrets.token_urlsafe(50), "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost", "DEBUG": "0", "LOG_LEVEL": "WARNING",
            "LIVE_TRADING_ENABLED": "1", "BINANCE_TIMEOUT": "10", "PUBLIC_URL": "http://127.0.0.1",
            "DJANGO_SETTINGS_MODULE": "tradeflow.settings", "PYTHONUNBUFFERED": "1",
            **{name: server.url + suffix for name, suffix in (
                ("BINANCE_API_URL", "/api"), ("BINANCE_SAPI_URL", "/sapi"), ("BINANCE_FUTURES_URL", "/fapi"),
                ("BINANCE_TESTNET_API_URL", "/api"), ("BINANCE_TESTNET_FUTURES_URL", "/fapi"))},
        })
        env.pop("TASKS_IN_THREAD", None)
        if args.batch_size is not None:
            env["BOT_BATCH_SIZE"] = str(args.batch_size)
        paper = args.broker == "paper"
        log(f"resetting database {DB_NAME} and Redis db {args.redis_db}; migrate")
        reset_stores(redis_url)
        run_checked([PY, "manage.py", "migrate", "--noinput", "-v0"], env, timeout=180)
        log(f"creating {args.subscribers} + {args.warm_subscribers} (warm-up) subscribers on the local Binance")
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=run_dir, delete=False) as fh:
            json.dump(keys, fh)
        out = run_checked([PY, "manage.py", "shell", "-c", SETUP_SCRIPT.format(keys_file=fh.name,
                           warm=args.warm_subscribers, paper=paper)], env, timeout=300)
        Path(fh.name).unlink()
        bots = json.loads(next(x for x in out.splitlines() if x.startswith("BENCH_SETUP ")).split(" ", 1)[1])

        port = free_port()
        procs.start("uvicorn", [str(VENV_BIN / "uvicorn"), "tradeflow.asgi:application", "--host", HOST, "--port",
                                str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"],
                    env, run_dir / "uvicorn.log")
        celery_cmds = []
        for n in range(args.workers):
            cmd = [str(VENV_BIN / "celery"), "-A", "tradeflow", "worker", "--loglevel", "WARNING", "--pool",
                   args.pool, "--concurrency", str(args.concurrency), "-n", f"botbench{n}-{run_id}@%h"]
            celery_cmds.append(" ".join(cmd[1:]))
            procs.start(f"celery{n}", cmd, env, run_dir / f"celery{n}.log")
        deadline = time.monotonic() + 60
        while True:
            procs.check_alive()
            with contextlib.suppress(OSError, ValueError, IndexError):
                if http(port, "GET", "/healthz", timeout=3)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("/healthz did not answer 200 within 60 s")
            time.sleep(0.5)
        time.sleep(2)  # every worker process up, not only the first to answer the ping

        log(f"warm-up: one alert to {args.warm_subscribers} subscribers (imports, connections, exchange rules)")
        _, status, body, _ = fire(port, bots["warm"], "warm-1", "ETHUSDT")
        if status != 202:
            raise RuntimeError(f"warm-up alert answered {status}: {body}")
        if wait_done(body["signal_id"], args.warm_subscribers, 60) < 0:
            raise RuntimeError("warm-up executions did not finish within 60 s; see the celery logs")
        server.log.clear()

        log(f"the alert: {args.subscribers} subscribers, {args.latency_ms:.0f} ms per Binance call")
        cpu0 = cpu_snapshot(procs)
        sent, status, body, ack_ms = fire(port, bots["bot"], "bench-1", "BTCUSDT")
        if status != 202:
            raise RuntimeError(f"the alert answered {status}: {body}")
        finished_s = wait_done(body["signal_id"], args.subscribers, 120)
        cpu1 = cpu_snapshot(procs)
        cpu_s = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0}
        cpu_s["celery_total"] = round(sum(v for k, v in cpu_s.items() if k.startswith("celery")), 2)
        procs.check_alive()
        rows = query("""SELECT e.status, e.reason_code, e.latency_ms, e.slippage_bps,
                               extract(epoch from s.received_at), extract(epoch from e.started_at),
                               extract(epoch from e.finished_at)
                        FROM brokers_execution e JOIN webhooks_signal s ON s.id = e.signal_id
                        WHERE e.signal_id = %s""", body["signal_id"])
        counters = query("SELECT total_subscribers, successful, failed, rejected FROM webhooks_signal "
                         "WHERE id = %s", body["signal_id"])[0]
        if paper:  # the paper broker's own book: one row per order it filled
            orders = [r[0] for r in query("SELECT p.client_order_id FROM brokers_paperorder p JOIN brokers_order o "
                                          "ON o.client_order_id = p.client_order_id AND o.leg = 'main' JOIN "
                                          "brokers_execution e ON e.id = o.execution_id WHERE e.signal_id = %s",
                                          body["signal_id"])]
            per_client_id = Counter(orders)
        else:
            orders = [r for r in server.calls(ORDER, "POST") if r.status == 200]
            per_client_id = Counter(r.params.get("newClientOrderId") for r in orders)
        latencies = [float(r[2]) for r in rows if r[2] is not None]
        received = float(rows[0][4]) if rows else sent
        last_ack = max(latencies) if latencies else None
        res = {
            "started": started.isoformat(timespec="seconds"), "run_dir": str(run_dir.relative_to(ROOT)),
            "setup": {"subscribers": args.subscribers, "broker": args.broker, "batch_size": args.batch_size,
                      "latency_ms_per_call": None if paper else args.latency_ms,
                      "workers": args.workers, "pool": args.pool, "concurrency": args.concurrency,
                      "celery_cmds": celery_cmds, "cpus": os.cpu_count(), "load_before": load},
            "webhook": {"status": status, "answer_ms": round(ack_ms, 2), "body": body},
            "to_last_main_order_ack_ms": round((received - sent) * 1000 + last_ack, 1) if last_ack else None,
            "latency_ms": {"n": len(latencies), "p50": pct(latencies, 50), "p90": pct(latencies, 90),
                           "p99": pct(latencies, 99), "max": last_ack, "min": min(latencies, default=None)},
            "all_finished_s": round(finished_s, 2) if finished_s >= 0 else None,
            "cpu_seconds_until_all_finished": cpu_s,
            "celery_cpu_ms_per_execution": round(cpu_s["celery_total"] * 1000 / args.subscribers, 2),
            "first_start_ms": round((min(float(r[5]) for r in rows) - received) * 1000, 1) if rows else None,
            "statuses": dict(Counter(f"{r[0]}:{r[1]}" if r[1] else r[0] for r in rows)),
            "signal_counters": dict(zip(("total_subscribers", "successful", "failed", "rejected"), counters,
                                        strict=True)),
            "server": {"main_orders": len(orders), "distinct_client_ids": len(per_client_id),
                       "duplicated_client_ids": sum(1 for c in per_client_id.values() if c > 1),
                       "algo_orders": len([r for r in server.calls(ALGO, "POST") if r.status == 200]),
                       "requests": len(server.log), "errors": dict(Counter(r.code for r in server.log if r.code))},
        }
        res["target_ok"] = bool(res["to_last_main_order_ack_ms"] and res["to_last_main_order_ack_ms"] <= 2000
                                and len(orders) == args.subscribers and len(per_client_id) == args.subscribers)
        out_file = RESULTS / f"bots-{run_id}.json"
        out_file.write_text(json.dumps(res, indent=2, default=str))
        report(res)
        log(f"JSON: {out_file.relative_to(ROOT)}   logs: {run_dir.relative_to(ROOT)}/")
        return 0 if len(orders) == args.subscribers else 1
    except (KeyboardInterrupt, Deadline) as exc:
        log(f"stopped: {exc!r}")
        return 130
    finally:
        signal.alarm(0)
        log("stopping uvicorn, the workers and the Binance server")
        procs.stop_all()
        if server is not None:
            server.__exit__(None, None, None)


def report(res: dict) -> None:
    lat, srv = res["latency_ms"], res["server"]
    print("=" * 100)
    setup = res["setup"]
    where = ("paper accounts" if setup["broker"] == "paper"
             else f"the local Binance, {setup['latency_ms_per_call']:.0f} ms per call")
    print(f"Bot fan-out: {setup['subscribers']} subscribers on {where}, batch size "
          f"{setup['batch_size'] if setup['batch_size'] is not None else 'default'}, "
          f"{res['setup']['workers']} × celery --pool {res['setup']['pool']} "
          f"--concurrency {res['setup']['concurrency']}, {res['setup']['cpus']} CPUs "
          f"(load {res['setup']['load_before']})")
    print(f"  webhook answer                         {res['webhook']['status']} in {res['webhook']['answer_ms']} ms, "
          f"total_subscribers {res['webhook']['body'].get('total_subscribers')}")
    print(f"  alert sent → last main-order ack       {res['to_last_main_order_ack_ms']} ms   (target ≤ 2000 ms)")
    print(f"  per-subscriber latency (receipt → ack) p50 {lat['p50']} / p90 {lat['p90']} / p99 {lat['p99']} / "
          f"max {lat['max']} ms (n={lat['n']})")
    print(f"  first execution started after          {res['first_start_ms']} ms")
    print(f"  all executions finished (with SL/TP)   {res['all_finished_s']} s")
    book = "paper book" if setup["broker"] == "paper" else "Binance server"
    print(f"  {book}: main orders {srv['main_orders']} (distinct client ids {srv['distinct_client_ids']}, "
          f"duplicated {srv['duplicated_client_ids']}), SL/TP algo orders {srv['algo_orders']}, "
          f"requests {srv['requests']}, errors {srv['errors']}")
    print(f"  executions {res['statuses']}   signal counters {res['signal_counters']}")
    print(f"  CPU seconds from the alert to the last execution finished: {res['cpu_seconds_until_all_finished']}")
    print(f"  Celery CPU per execution               {res['celery_cpu_ms_per_execution']} ms")
    print(f"  target met: {res['target_ok']}")
    print("=" * 100)


if __name__ == "__main__":
    sys.exit(main())
