"""Webhook benchmark: TradeFlow in production mode (uvicorn + PostgreSQL + Redis + a Celery worker).

Run from the project root::

    .venv/bin/python bench/webhook_bench.py            # about 2 minutes, figures + bench/results/*.json

What it does (see bench/README.md):

1. A dedicated database ``tradeflow_bench`` (dropped and created), a dedicated Redis db (flushed), fresh
   SECRET_KEY / FIELD_ENCRYPTION_KEY, DEBUG off, a webhook rate limit high enough never to trip;
   ``migrate``; N paper accounts with webhook keys.
2. ``uvicorn tradeflow.asgi:application`` (2 workers) and ``celery -A tradeflow worker`` as subprocesses.
3. From this (separate) process: (a) ack latency at a fixed open-loop rate, (b) max webhook throughput
   with wrk, (c) /livez throughput with the same wrk settings (the framework floor), (d) signal → paper
   fill latency and end-state checks, read from the database after the run.

Every loop is bounded in count and time; the whole run is bounded by ``--max-seconds`` (a watchdog
alarm), and every subprocess is stopped on exit, Ctrl-C or error. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PY = str(VENV_BIN / "python")
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "tradeflow_bench"
TERMINAL = ("filled", "placed", "rejected", "failed")  # "placed": a limit order resting at the broker
UNIFY_SYMBOLS = ("NIFTYBEES", "BANKBEES", "GOLDBEES", "ITBEES")


# --------------------------------------------------------------------------------------------- utilities


class Deadline(Exception):
    """The whole run exceeded --max-seconds."""


STOP: list[str] = []  # set by the signal handlers; the asyncio client polls it (uvloop swallows KeyboardInterrupt)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of an unsorted list; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99),
            "max": max(values), "mean": statistics.fmean(values)}


def fmt(value, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


# --------------------------------------------------------------------------------------------- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int, reaped: bool = True) -> float:
    """CPU seconds of one process and of its reaped children (0 if it is gone). The children part matters
    for PostgreSQL: a backend that lives for one request is counted in the postmaster's cutime/cstime."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15 if reaped else 13]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(pid: int) -> list[int]:
    found, todo = [], [pid]
    for _ in range(1000):  # bounded walk of the process tree
        if not todo:
            break
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            with open(f"/proc/{current}/task/{current}/children") as fh:
                todo.extend(int(x) for x in fh.read().split())
    return found


def _pids_named(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().strip().startswith(name):
                        pids.append(int(entry))
    return pids


class CpuMeter:
    """CPU seconds used per component between start() and stop(): where the machine's 2 cores went."""

    def __init__(self, groups: dict[str, callable]):
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}
        self.t0 = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        sample = {name: {pid: _proc_cpu(pid, reaped=name != "client") for pid in pids()}
                  for name, pids in self.groups.items()}
        sample["machine"] = {0: machine_busy_seconds()}
        return sample

    def start(self) -> None:
        self.before, self.t0 = self._sample(), time.perf_counter()

    def stop(self) -> dict:
        after, wall = self._sample(), time.perf_counter() - self.t0
        out = {"wall_s": round(wall, 2)}
        for name, procs in after.items():
            used = sum(cpu - self.before.get(name, {}).get(pid, 0.0) for pid, cpu in procs.items())
            out[name] = round(100 * used / wall, 1) if wall else None  # % of one core
        # Everything else on the machine (other sessions' tests, the bench's own parent shell...).
        out["other"] = round(out["machine"] - sum(v for k, v in out.items() if k not in ("wall_s", "machine")), 1)
        return out


def group_cpu(meter: CpuMeter, name: str) -> float:
    return sum(_proc_cpu(pid) for pid in meter.groups[name]())


def cpu_ms_per(cpu: dict, name: str, count: int) -> float | None:
    """CPU milliseconds one component spent per request: robust to other load on the machine."""
    if not count or cpu.get(name) is None:
        return None
    return round(cpu[name] / 100 * cpu["wall_s"] * 1000 / count, 2)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def machine_load(seconds: float = 2.0) -> float:
    """% of one core busy over a short window, before the bench starts anything."""
    before, t0 = machine_busy_seconds(), time.perf_counter()
    time.sleep(seconds)
    return round(100 * (machine_busy_seconds() - before) / (time.perf_counter() - t0), 1)


# --------------------------------------------------------------------------------------------- environment


def bench_env(args) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_"))}
    env.update({
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DEBUG": "0",
        "WEBHOOK_RATE_LIMIT": "1000000/m",
        "LOG_LEVEL": args.log_level,
        "DJANGO_SETTINGS_MODULE": "tradeflow.settings",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("TASKS_IN_THREAD", None)
    return env


def reset_stores(env: dict[str, str]) -> None:
    import psycopg
    import redis

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()


ACCOUNTS_SCRIPT = """
import json
from datetime import timedelta
from django.utils import timezone
from accounts.models import User
from billing.models import BillingAccount, Plan
from brokers.services import account_create
out = []
pro = Plan.objects.get(slug="pro")  # unlimited trades: a customer who trades thousands of times pays for a plan
for i in range({n}):
    user = User.objects.create_user(f"bench{{i}}@bench.local")  # no password: unusable, and fast
    BillingAccount.objects.filter(user=user).update(plan=pro, status="active",
                                                    current_period_end=timezone.now() + timedelta(days=30))
    account, key = account_create(owner=user, label=f"Bench {{i}}")
    out.append({{"id": account.pk, "key": key.raw}})
print("BENCH_KEYS " + json.dumps(out))
"""


def run_checked(cmd: list[str], env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    return proc.stdout


def create_accounts(env: dict[str, str], n: int) -> list[dict]:
    out = run_checked([PY, "manage.py", "shell", "-c", ACCOUNTS_SCRIPT.format(n=n)], env, timeout=120)
    line = next(x for x in out.splitlines() if x.startswith("BENCH_KEYS "))
    return json.loads(line.split(" ", 1)[1])


# --------------------------------------------------------------------------------------------- subprocesses


class Procs:
    """The server processes this run started; each in its own session so the whole tree can be stopped."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen]] = []
        self.files = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], logfile: Path) -> subprocess.Popen:
        fh = open(logfile, "wb")  # noqa: SIM115 - closed in stop_all
        self.files.append(fh)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.items.append((name, proc))
        return proc

    def pid(self, name: str) -> int | None:
        return next((p.pid for n, p in self.items if n == name), None)

    def check_alive(self) -> None:
        for name, proc in self.items:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see its log in the run directory")

    def stop_all(self) -> None:
        for _name, proc in reversed(self.items):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 10
        for _name, proc in self.items:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, end - time.monotonic()))
        for _name, proc in self.items:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group (e.g. pool children)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for fh in self.files:
            fh.close()
        self.items.clear()


def start_py_spy(procs: Procs, run_dir: Path, seconds: float, mode: str) -> list[subprocess.Popen]:
    """py-spy on every Python process of the server (workers and pool children, not the supervisors)."""
    spy = VENV_BIN / "py-spy"
    if not spy.exists():
        log("    --py-spy: .venv/bin/py-spy not found, not profiling")
        return []
    out = []
    for name in ("uvicorn", "celery"):
        pids = _children(procs.pid(name))
        # uvicorn's supervisor only watches its workers; Celery's main process is the consumer (it reads the
        # broker, hands tasks to the pool children and acknowledges them), so it is profiled with them.
        targets = [p for p in pids if p != procs.pid(name) or name == "celery"] or pids
        for pid in targets[:8]:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"resource_tracker" in cmdline:
                    continue
            out.append(subprocess.Popen(
                [str(spy), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "--threads", "--nonblocking",
                 *(["--idle"] if mode == "wall" else []),
                 "--format", "raw", "-o", str(run_dir / f"pyspy-{mode}-{name}-{pid}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # let py-spy attach
    return out


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        for _ in range(1000):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def wait_healthy(port: int, procs: Procs, timeout: float) -> dict:
    end, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < end:
        procs.check_alive()
        try:
            status, body = http_get(port, "/healthz", timeout=3)
            if status == 200:
                return json.loads(body)
            last = f"{status} {body[:300]!r}"
        except (OSError, ValueError, IndexError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise RuntimeError(f"/healthz did not answer 200 within {timeout:.0f} s: {last}")


# --------------------------------------------------------------------------------------------- bodies


class Bodies:
    """Unique alert bodies spread over the accounts: half unify.v1 (deduped by body hash), half options
    format with an explicit ``id`` (deduped by id), so nothing is a duplicate and both paths run."""

    def __init__(self, accounts: list[dict], run_id: str, seed: int = 1):
        self.accounts, self.run_id, self.n = accounts, run_id, 0
        self.rng = random.Random(seed)

    def next(self) -> tuple[str, bytes]:
        self.n += 1
        account = self.accounts[self.n % len(self.accounts)]
        path = f"/api/v1/webhooks/{account['key']}"
        if self.n % 2:
            body = {"version": "unify.v1", "intent": {
                "side": self.rng.choice(("buy", "sell")), "type": "market",
                "symbol": self.rng.choice(UNIFY_SYMBOLS), "qty": str(self.rng.randint(1, 20)),
                "price": f"{self.rng.uniform(50, 500):.2f}", "sl": {"mode": "pct", "value": 1}},
                "comment": f"{self.run_id}-{self.n}"}
        else:
            strike = 24000 + 50 * self.rng.randint(0, 40)
            body = {"signal": "S1", "strike": strike, "type": self.rng.choice(("PE", "CE")), "action": "ENTRY",
                    "spot_price": f"{strike + self.rng.uniform(-300, 300):.2f}", "id": f"{self.run_id}-{self.n}"}
        return path, json.dumps(body).encode()


# --------------------------------------------------------------------------------------------- open-loop client


# uvicorn closes a keep-alive connection idle for 5 s (--timeout-keep-alive); a client that reuses one just then
# gets its request dropped unanswered. Like a browser, the client retires its idle connections before that.
IDLE_RETIRE_S = 4.0


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.used = time.perf_counter()


def _reusable(idle: list[Conn]) -> tuple[Conn | None, int]:
    """The most recently used idle connection, and how many idle too long were closed on the way."""
    closed = 0
    while idle:
        conn = idle.pop()
        if time.perf_counter() - conn.used < IDLE_RETIRE_S:
            return conn, closed
        conn.writer.close()
        closed += 1
    return None, closed


async def _exchange(conn: Conn, path: str, body: bytes) -> tuple[int, bytes]:
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    conn.writer.write(head + body)
    raw = await conn.reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    payload = await conn.reader.readexactly(length) if length else b""
    return status, payload


async def open_loop(port: int, bodies: Bodies, rate: float, duration: float, max_conns: int = 256,
                    timeout: float = 5.0) -> dict:
    """Send ``rate`` requests per second on a fixed schedule for ``duration`` seconds (open loop: a send
    never waits for an earlier answer; an idle keep-alive connection is reused, else a new one opened)."""
    idle: list[Conn] = []
    opened = 0
    results: list[dict] = []
    tasks: set[asyncio.Task] = set()
    total = int(rate * duration)

    async def one(scheduled: float) -> None:
        nonlocal opened
        path, body = bodies.next()
        conn, closed = _reusable(idle)
        opened -= closed
        if conn is None:
            if opened >= max_conns:
                results.append({"status": "not_sent", "error": f"client cap of {max_conns} connections in flight",
                                "lag": 0.0})
                return
            opened += 1
            reader, writer = await asyncio.open_connection(HOST, port)
            conn = Conn(reader, writer)
        sent = time.perf_counter()
        try:
            status, payload = await asyncio.wait_for(_exchange(conn, path, body), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.writer.close()
            opened -= 1
            results.append({"error": repr(exc)[:200], "lag": sent - scheduled})
            return
        done = conn.used = time.perf_counter()
        idle.append(conn)
        item = {"status": status, "ms": (done - sent) * 1000, "ms_sched": (done - scheduled) * 1000,
                "lag": sent - scheduled}
        if status == 202:
            item["signal_id"] = json.loads(payload)["signal_id"]
        results.append(item)

    t0 = time.perf_counter() + 0.05
    for i in range(total):
        if STOP:
            break
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 1)
    elapsed = time.perf_counter() - t0
    for conn in idle:
        conn.writer.close()
    ok = [r for r in results if r.get("status") == 202]
    statuses: dict[str, int] = {}
    for r in results:
        key = str(r.get("status", "error"))
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "rate_target": rate, "duration_s": round(elapsed, 2), "sent": len(results),
        "achieved_rate": round(len(results) / elapsed, 1) if elapsed else None,
        "statuses": statuses, "connections_opened": opened,
        "errors": [r["error"] for r in results if "error" in r][:5],
        "latency_ms": summary([r["ms"] for r in ok]),  # 202 answers only; see "statuses" for the rest
        "latency_all_answers_ms": summary([r["ms"] for r in results if "ms" in r]),
        "latency_from_schedule_ms": summary([r["ms_sched"] for r in ok]),
        "send_lag_ms": summary([r["lag"] * 1000 for r in results]),
        "signal_ids": [r["signal_id"] for r in ok],
    }


def run_open_loop(port: int, bodies: Bodies, rate: float, duration: float) -> dict:
    try:
        import uvloop

        result = uvloop.run(open_loop(port, bodies, rate, duration))
    except ImportError:
        result = asyncio.run(open_loop(port, bodies, rate, duration))
    if STOP:
        raise KeyboardInterrupt(STOP[0])
    return result


# --------------------------------------------------------------------------------------------- wrk

WRK_LUA = r"""
-- Generated by bench/webhook_bench.py: unique webhook bodies spread over the bench accounts.
local keys = {KEYS}
local symbols = {"NIFTYBEES", "BANKBEES", "GOLDBEES", "ITBEES"}
local run_id = "{RUN_ID}"
local counter = 0
tid = 0 -- global: setup() sets it per thread
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(tid * 7919 + os.time())
end

function request()
  counter = counter + 1
  local key = keys[(counter + tid * 7) % #keys + 1]
  local uid = run_id .. "-w" .. tid .. "-" .. counter
  local body
  if counter % 2 == 1 then
    local side = (math.random(2) == 1) and "buy" or "sell"
    body = string.format('{"version": "unify.v1", "intent": {"side": "%s", "type": "market", "symbol": "%s", '
      .. '"qty": "%d", "price": "%.2f", "sl": {"mode": "pct", "value": 1}}, "comment": "%s"}',
      side, symbols[math.random(#symbols)], math.random(20), 50 + math.random() * 450, uid)
  else
    local strike = 24000 + 50 * math.random(0, 40)
    local otype = (math.random(2) == 1) and "PE" or "CE"
    body = string.format('{"signal": "S1", "strike": %d, "type": "%s", "action": "ENTRY", '
      .. '"spot_price": "%.2f", "id": "%s"}', strike, otype, strike - 300 + math.random() * 600, uid)
  end
  return wrk.format("POST", "/api/v1/webhooks/" .. key, {["Content-Type"] = "text/plain"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

WRK_GET_LUA = WRK_LUA.split("function request()")[0] + r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def write_lua(tmp: Path, accounts: list[dict], run_id: str) -> tuple[Path, Path]:
    keys = "{" + ", ".join(json.dumps(a["key"]) for a in accounts) + "}"
    post = tmp / "webhook.lua"
    post.write_text(WRK_LUA.replace("{KEYS}", keys).replace("{RUN_ID}", run_id))
    get = tmp / "get.lua"
    get.write_text(WRK_GET_LUA.replace("{KEYS}", keys).replace("{RUN_ID}", run_id))
    return post, get


def run_wrk(port: int, path: str, script: Path, *, threads: int, conns: int, seconds: int, meter: CpuMeter) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
           f"http://{HOST}:{port}{path}"]
    meter.groups["client"] = list  # wrk's own CPU comes from the children's rusage below
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    meter.start()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:  # Ctrl-C or the watchdog while wrk runs
            proc.kill()
            proc.wait(timeout=5)
    cpu = meter.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu["client"] = round(100 * used / cpu["wall_s"], 1)
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result:\n{out[-2000:]}")
    r = json.loads(line.split(" ", 1)[1])
    dur = r["duration_us"] / 1e6
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {
        "path": path.split("/api/v1/webhooks/")[0] or "/api/v1/webhooks/<key>", "threads": threads,
        "connections": conns, "duration_s": round(dur, 2), "requests": r["requests"],
        "rps": round(r["requests"] / dur, 1), "ok_rps": round((r["requests"] - r["status"]) / dur, 1),
        "errors": {k: r[k] for k in ("connect", "read", "write", "status", "timeout")}, "error_total": errors,
        "latency_ms": {k.replace("_us", ""): r[k] / 1000 for k in ("p50_us", "p90_us", "p99_us", "max_us")},
        "cpu_pct_of_core": cpu,
    }


# --------------------------------------------------------------------------------------------- database checks


_DB = None


def db():
    """One connection for the whole run, opened before any load (so it exists even if the server exhausts
    PostgreSQL's max_connections)."""
    global _DB
    if _DB is None or _DB.closed:
        import psycopg

        _DB = psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}", autocommit=True)
    return _DB


def pg_connections() -> dict:
    rows = db().execute("SELECT coalesce(application_name, ''), state, count(*) FROM pg_stat_activity "
                        "WHERE datname = %s GROUP BY 1, 2", (DB_NAME,)).fetchall()
    return {"total": sum(r[2] for r in rows), "by_state": {f"{r[1]}": r[2] for r in rows},
            "max_connections": int(db().execute("SHOW max_connections").fetchone()[0])}


def terminal_count() -> int:
    return db().execute("SELECT count(*) FROM brokers_execution WHERE status = ANY(%s)", (list(TERMINAL),)
                        ).fetchone()[0]


def wait_drained(max_seconds: float) -> dict:
    """Wait until no execution is pending/running (bounded); report how fast the worker drained."""
    t0, first, left = time.monotonic(), None, None
    waits: dict[str, int] = {}
    for _ in range(int(max_seconds * 4) + 1):
        left = db().execute("SELECT count(*) FROM brokers_execution WHERE status IN ('pending', 'running')"
                            ).fetchone()[0]
        first = left if first is None else first
        if left == 0 or time.monotonic() - t0 > max_seconds:
            break
        # What the database sessions are doing meanwhile: a worker blocked on another's row locks shows as "Lock".
        for state, wait, count in db().execute(
                "SELECT state, coalesce(wait_event_type, '-'), count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() AND state <> 'idle' GROUP BY 1, 2",
                (DB_NAME,)).fetchall():
            waits[f"{state}/{wait}"] = waits.get(f"{state}/{wait}", 0) + count
        time.sleep(0.25)
    waited = time.monotonic() - t0
    return {"backlog_at_start": first, "left": left, "waited_s": round(waited, 2),
            "drain_rate_per_s": round((first - left) / waited, 1) if first and waited > 0.3 else None,
            "pg_session_samples": waits}


FILL_SQL = """
SELECT s.id, e.status,
       EXTRACT(EPOCH FROM (o.filled_at - s.received_at)) * 1000 AS fill_ms,
       EXTRACT(EPOCH FROM (e.started_at - s.received_at)) * 1000 AS start_ms,
       EXTRACT(EPOCH FROM (o.filled_at - e.started_at)) * 1000 AS run_ms,
       EXTRACT(EPOCH FROM (e.finished_at - s.received_at)) * 1000 AS finish_ms,
       s.ack_ms, s.format
FROM webhooks_signal s
LEFT JOIN brokers_execution e ON e.signal_id = s.id
LEFT JOIN brokers_order o ON o.execution_id = e.id AND o.leg = 'main'
WHERE s.id = ANY(%s::uuid[])
"""


def fill_latency(signal_ids: list[str]) -> dict:
    """Signal.received_at → main Order.filled_at (and its parts) for the given signals."""
    rows = db().execute(FILL_SQL, (signal_ids,)).fetchall()
    log_ms = [float(r[0]) for r in db().execute(
        "SELECT latency_ms FROM webhooks_webhooklog WHERE signal_id = ANY(%s::uuid[])", (signal_ids,))]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[str(r[1])] = statuses.get(str(r[1]), 0) + 1

    def col(i: int, fmt_: str | None = None) -> list[float]:
        return [float(r[i]) for r in rows if r[i] is not None and (fmt_ is None or r[7] == fmt_)]

    return {
        "signals_sent": len(signal_ids), "signals_found": len({str(r[0]) for r in rows}),
        "execution_status": statuses,
        "fill_ms": summary(col(2)),
        "fill_ms_unify": summary(col(2, "unify.v1")),
        "fill_ms_options": summary(col(2, "options")),
        "received_to_task_start_ms": summary(col(3)),
        "task_start_to_fill_ms": summary(col(4)),
        "received_to_finished_ms": summary(col(5)),
        "server_ack_ms_signal_row": summary(col(6)),
        "server_latency_ms_log_row": summary(log_ms),
        # A drain claims its batch in one statement, so the executions of one batch share their started_at.
        "worker_batch_size": summary([float(n) for (n,) in db().execute(
            "SELECT count(*) FROM brokers_execution WHERE signal_id = ANY(%s::uuid[]) GROUP BY started_at",
            (signal_ids,))]),
    }


def end_state_checks() -> dict:
    def one(sql: str) -> int:
        return db().execute(sql).fetchone()[0]

    statuses = dict(db().execute("SELECT status, count(*) FROM brokers_execution GROUP BY status").fetchall())
    signals = one("SELECT count(*) FROM webhooks_signal")
    no_exec = one("SELECT count(*) FROM webhooks_signal s WHERE NOT EXISTS "
                  "(SELECT 1 FROM brokers_execution e WHERE e.signal_id = s.id)")
    multi_main = one("SELECT count(*) FROM (SELECT execution_id FROM brokers_order WHERE leg = 'main' "
                     "GROUP BY execution_id HAVING count(*) > 1) t")
    filled_no_main = one("SELECT count(*) FROM brokers_execution e WHERE e.status = 'filled' AND NOT EXISTS "
                         "(SELECT 1 FROM brokers_order o WHERE o.execution_id = e.id AND o.leg = 'main' "
                         "AND o.status = 'filled')")
    paper_dupes = one("SELECT count(*) FROM (SELECT client_order_id FROM brokers_paperorder "
                      "GROUP BY account_id, client_order_id HAVING count(*) > 1) t")
    reasons = dict(db().execute("SELECT reason_code, count(*) FROM brokers_execution WHERE status <> 'filled' "
                                "GROUP BY reason_code").fetchall())
    logs = dict(db().execute("SELECT status, count(*) FROM webhooks_webhooklog GROUP BY status").fetchall())
    pending = sum(v for k, v in statuses.items() if k not in TERMINAL)
    return {
        "signals": signals, "executions_by_status": statuses, "not_terminal": pending,
        "signals_without_execution": no_exec, "executions_with_more_than_one_main_order": multi_main,
        "filled_without_filled_main_order": filled_no_main, "duplicate_paper_orders": paper_dupes,
        "non_filled_reasons": reasons, "webhook_log_by_status": {str(k): v for k, v in logs.items()},
        "ok": pending == 0 and no_exec == 0 and multi_main == 0 and filled_no_main == 0 and paper_dupes == 0,
    }


# --------------------------------------------------------------------------------------------- report


def _ms(stats: dict, keys=("p50", "p90", "p99", "max")) -> str:
    return " / ".join(fmt(stats.get(k)) for k in keys)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_report(res: dict) -> None:
    a, fl, t = res["ack"], res["fill"], res["targets"]
    wh, lv, eff = res["throughput_webhook"], res["throughput_livez"], res["efficiency"]
    low_ack, low_fill = res["low_rate"]["ack"], res["low_rate"]["fill"]
    drain, checks, pg = res["drain_after_throughput"], res["checks"], res["postgres_connections"]
    rate = f"{a['rate_target']:.0f} req/s"
    rows = [
        (f"(a) Ack latency, {rate} open loop, {a['duration_s']} s", f"answers {a['statuses']}", ""),
        ("    p50 / p90 / p99 / max (ms)", _ms(a["latency_ms"]), f"p99 ≤ 10 ms: {_verdict(t['ack_p99_ok'])}"),
        ("    p99 from schedule; client send lag p99 (ms)",
         f"{fmt(a['latency_from_schedule_ms'].get('p99'))}; {fmt(a['send_lag_ms'].get('p99'))}", ""),
        ("    server ack_ms (Signal row) p50 / p99 (ms)", _ms(fl["server_ack_ms_signal_row"], ("p50", "p99")), ""),
        (f"(b) Webhook throughput, wrk -t{wh['threads']} -c{wh['connections']} {wh['duration_s']} s",
         fmt(wh["ok_rps"], " req/s", 1), f"errors {wh['error_total']}; all: "
         + ", ".join(f"c{r['connections']} {r['ok_rps']:.0f}" for r in res["throughput_runs"]["webhook"])),
        ("    latency p50 / p99 under load (ms)", _ms(wh["latency_ms"], ("p50", "p99")), ""),
        (f"(c) /livez throughput, wrk -t{lv['threads']} -c{lv['connections']} {lv['duration_s']} s",
         fmt(lv["ok_rps"], " req/s", 1), f"errors {lv['error_total']}; wrk CPU {lv['cpu_pct_of_core']['client']} %"),
        ("    ratio webhook / livez", fmt(res["ratio_pct"], " %", 1), f"≥ 60 %: {_verdict(t['throughput_ok'])}"),
        (f"(d) Signal → paper fill at {rate} (main leg)", f"executions {fl['execution_status']}", ""),
        ("    p50 / p90 / p99 / max (ms)", _ms(fl["fill_ms"]), f"p50 ≤ 20 ms: {_verdict(t['fill_p50_ok'])}"),
        ("    unify.v1 p50 / options p50 (ms)",
         f"{fmt(fl['fill_ms_unify'].get('p50'))} / {fmt(fl['fill_ms_options'].get('p50'))}", ""),
        ("    received → task start p50 / p99 (ms)", _ms(fl["received_to_task_start_ms"], ("p50", "p99")), ""),
        ("    task start → main fill p50 / p99 (ms)", _ms(fl["task_start_to_fill_ms"], ("p50", "p99")), ""),
        ("    worker batches: count, mean / p50 / max size",
         f"{fl['worker_batch_size'].get('n')}, {fmt(fl['worker_batch_size'].get('mean'))} / "
         f"{fmt(fl['worker_batch_size'].get('p50'), '', 0)} / {fmt(fl['worker_batch_size'].get('max'), '', 0)}", ""),
        (f"(d0) Unloaded, {low_ack['rate_target']:.0f} req/s: ack p50 / p99 (ms)", _ms(low_ack["latency_ms"],
                                                                                      ("p50", "p99")), ""),
        ("    signal → fill p50 / p99 (ms)", _ms(low_fill["fill_ms"], ("p50", "p99")),
         f"p50 ≤ 20 ms: {_verdict(t['fill_p50_unloaded_ok'])}"),
        ("    received → task start / start → fill p50 (ms)",
         f"{fmt(low_fill['received_to_task_start_ms'].get('p50'))} / "
         f"{fmt(low_fill['task_start_to_fill_ms'].get('p50'))}", ""),
        ("CPU ms per request: uvicorn webhook / livez",
         f"{fmt(eff.get('uvicorn_cpu_ms_per_webhook_wrk'))} / {fmt(eff.get('uvicorn_cpu_ms_per_livez'))}", ""),
        ("CPU ms per execution: Celery worker", fmt(eff.get("celery_cpu_ms_per_execution")), ""),
        ("Worker drain after (b)", f"{drain.get('drain_rate_per_s')} exec/s",
         f"backlog {drain['backlog_at_start']}, left {drain['left']}"),
        ("End state, all signals", json.dumps(checks["executions_by_status"]), "OK" if checks["ok"] else "PROBLEM"),
        ("    >1 main order / no execution / dup. paper orders",
         f"{checks['executions_with_more_than_one_main_order']} / {checks['signals_without_execution']} / "
         f"{checks['duplicate_paper_orders']}", ""),
        ("PostgreSQL connections after (a) / (b)",
         f"{pg['after_ack']['total']} / {pg['after_webhook_throughput']['total']}",
         f"max_connections {pg['after_ack']['max_connections']}"),
    ]
    width = max(len(r[0]) for r in rows) + 2
    setup = res["setup"]
    print()
    print("=" * 110)
    print(f"TradeFlow webhook benchmark {res['started']}: {setup['cpus']} CPUs, uvicorn x{setup['uvicorn_workers']}, "
          f"celery {setup['celery_pool']} x{setup['celery_concurrency']}, commit {setup['git_commit']}"
          f"{' (dirty)' if setup['git_dirty'] else ''}")
    print("-" * 110)
    for label, value, note in rows:
        print(f"{label:<{width}}{value:<36}{note}")
    print("-" * 110)
    print(f"CPU, % of one core: client / uvicorn / celery / postgres / redis / other / machine (of "
          f"{100 * (setup['cpus'] or 1)}); busy before start: {setup['background_cpu_pct_before']} %")
    for name in ("ack", "throughput_livez", "throughput_webhook"):
        cpu = res[name].get("cpu_pct_of_core") or {}
        print(f"  {name:<20}" + " / ".join(fmt(cpu.get(k), "", 0) for k in
                                           ("client", "uvicorn", "celery", "postgres", "redis", "other", "machine")))
    print("=" * 110)


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=20, help="paper accounts to spread alerts over")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop rate for the ack latency phase")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--low-rate", type=float, default=10.0, help="rate of the unloaded pipeline phase (d0)")
    parser.add_argument("--wrk-seconds", type=int, default=6, help="length of each wrk run")
    parser.add_argument("--wrk-connections", default="8,32",
                        help="comma-separated connection counts; each is run, the best is reported")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--uvicorn-workers", type=int, default=2)
    parser.add_argument("--celery-pool", default="prefork")
    parser.add_argument("--celery-concurrency", type=int, default=2)
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL and the Celery worker's --loglevel")
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--py-spy", choices=("cpu", "wall"), default=None,
                        help="record py-spy profiles (collapsed stacks; 'wall' includes idle/waiting samples) of "
                             "every uvicorn and Celery process during phase (a) into the run directory "
                             "(needs .venv/bin/py-spy; not a project requirement)")
    parser.add_argument("--web-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for uvicorn only, e.g. CONN_MAX_AGE=0 (repeatable)")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the Celery worker only (repeatable)")
    parser.add_argument("--worker-nice", type=int, default=10,
                        help="run the Celery worker under nice -n N, as the Procfile does (the acknowledging web "
                             "workers first); 0 for no priority")
    parser.add_argument("--max-seconds", type=int, default=400, help="hard bound on the whole run (watchdog)")
    parser.add_argument("--drain-seconds", type=float, default=150,
                        help="how long to let the worker finish (a)'s backlog before measuring throughput")
    args = parser.parse_args()

    if any("=" not in x for x in args.web_env + args.worker_env):
        parser.error("--web-env/--worker-env take NAME=VALUE")
    if not all(x.isdigit() and 1 <= int(x) <= 512 for x in args.wrk_connections.split(",")) \
            or len(args.wrk_connections.split(",")) > 4:
        parser.error("--wrk-connections: up to 4 counts between 1 and 512, e.g. 8,32")
    if not 1 <= args.accounts <= 1000 or not 1 <= args.rate <= 5000 or args.latency_seconds > 60 \
            or args.wrk_seconds > 60:
        parser.error("out of the bounded range (accounts 1-1000, rate 1-5000, phases ≤ 60 s)")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install -y wrk)")

    started = datetime.now(UTC)
    run_id = started.strftime("%Y%m%d-%H%M%S")
    run_dir = RESULTS / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="tf-bench-"))  # the wrk scripts (they hold the bench accounts' keys)

    def on_signal(signum, _frame):
        STOP.append(f"signal {signum}")
        raise KeyboardInterrupt(f"signal {signum}")

    def on_alarm(_signum, _frame):
        STOP.append("watchdog")
        raise Deadline(f"the run exceeded --max-seconds={args.max_seconds}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)
    t_start = time.monotonic()
    try:
        background = machine_load()
        log(f"machine busy before the bench: {background} % of one core ({os.cpu_count()} cores)")
        if background > 25:
            log("    WARNING: other work is running on this machine; the figures will be lower and noisier")
        env = bench_env(args)
        log(f"resetting database {DB_NAME} and Redis db {args.redis_db}")
        reset_stores(env)
        log("migrate")
        run_checked([PY, "manage.py", "migrate", "--noinput", "-v0"], env, timeout=120)
        log(f"creating {args.accounts} paper accounts")
        accounts = create_accounts(env, args.accounts)
        db()  # the bench's own connection, opened before any load
        web_env = {**env, **dict(x.split("=", 1) for x in args.web_env)}
        worker_env = {**env, **dict(x.split("=", 1) for x in args.worker_env)}

        port = free_port()
        uvicorn_cmd = [str(VENV_BIN / "uvicorn"), "tradeflow.asgi:application", "--host", HOST, "--port", str(port),
                       "--workers", str(args.uvicorn_workers), "--no-access-log", "--log-level", "warning"]
        celery_cmd = [*(["nice", "-n", str(args.worker_nice)] if args.worker_nice else []),
                      str(VENV_BIN / "celery"), "-A", "tradeflow", "worker", "--loglevel", args.log_level,
                      "--pool", args.celery_pool, "--concurrency", str(args.celery_concurrency), "-n",
                      f"bench-{run_id}@%h"]
        log(f"starting uvicorn on {HOST}:{port} and the Celery worker")
        procs.start("uvicorn", uvicorn_cmd, web_env, run_dir / "uvicorn.log")
        procs.start("celery", celery_cmd, worker_env, run_dir / "celery.log")
        health = wait_healthy(port, procs, timeout=60)
        log(f"healthy: {health['checks']}")

        meter = CpuMeter({
            "client": lambda: [os.getpid()],
            "uvicorn": lambda: _children(procs.pid("uvicorn")),
            "celery": lambda: _children(procs.pid("celery")),
            "postgres": lambda: _pids_named("postgres"),
            "redis": lambda: _pids_named("redis-server"),
        })
        bodies = Bodies(accounts, run_id)

        log("warm-up: 2 s at 50 req/s")
        warm = run_open_loop(port, bodies, 50, 2)
        if warm["statuses"].get("202", 0) < warm["sent"]:
            log(f"    warm-up answers: {warm['statuses']} {warm['errors']} (see uvicorn.log)")
        wait_drained(20)
        pg = {"after_warmup": pg_connections()}

        log(f"(d0) unloaded pipeline: {args.low_rate:.0f} req/s for 5 s, then signal → fill from the database")
        low = run_open_loop(port, bodies, args.low_rate, 5)
        wait_drained(15)
        low_fill = fill_latency(low["signal_ids"])
        log(f"    ack p50 {fmt(low['latency_ms'].get('p50'))} ms, fill p50 {fmt(low_fill['fill_ms'].get('p50'))} ms")

        log(f"(a) ack latency: {args.rate:.0f} req/s open loop for {args.latency_seconds:.0f} s")
        spies = start_py_spy(procs, run_dir, args.latency_seconds + 3, args.py_spy) if args.py_spy else []
        celery_cpu0, done0 = group_cpu(meter, "celery"), terminal_count()
        meter.start()
        ack = run_open_loop(port, bodies, args.rate, args.latency_seconds)
        for spy in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(timeout=15)
        ack["cpu_pct_of_core"] = meter.stop()
        pg["after_ack"] = pg_connections()
        log(f"    answers {ack['statuses']}, p99 {fmt(ack['latency_ms'].get('p99'))} ms; "
            f"PostgreSQL connections to the bench db: {pg['after_ack']['total']}")
        # The floor (c) must not be measured while the worker is still busy with (a)'s backlog.
        drain_a = wait_drained(args.drain_seconds)
        log(f"    worker drained the rest in {drain_a['waited_s']} s (backlog {drain_a['backlog_at_start']}); "
            f"database sessions sampled: {drain_a['pg_session_samples']}")
        if drain_a["left"]:
            log(f"    WARNING: {drain_a['left']} executions still queued: the worker competes with (c) and (b)")
        fill = fill_latency(ack["signal_ids"])
        executions_done = terminal_count() - done0
        efficiency = {
            "uvicorn_cpu_ms_per_webhook_at_rate": cpu_ms_per(ack["cpu_pct_of_core"], "uvicorn", ack["sent"]),
            "celery_cpu_ms_per_execution": round(1000 * (group_cpu(meter, "celery") - celery_cpu0)
                                                 / executions_done, 2) if executions_done else None,
        }

        post_lua, get_lua = write_lua(tmp, accounts, run_id)
        sweep = [int(x) for x in args.wrk_connections.split(",")]
        livez_runs, hook_runs = [], []
        for conns in sweep:
            log(f"(c) /livez throughput: wrk -t{args.wrk_threads} -c{conns} {args.wrk_seconds}s")
            livez_runs.append(run_wrk(port, "/livez", get_lua, threads=args.wrk_threads, conns=conns,
                                      seconds=args.wrk_seconds, meter=meter))
            log(f"    {livez_runs[-1]['ok_rps']} req/s, wrk used {livez_runs[-1]['cpu_pct_of_core']['client']} % "
                f"of a core")
        pg["after_livez"] = pg_connections()
        for conns in sweep:
            log(f"(b) webhook throughput: wrk -t{args.wrk_threads} -c{conns} {args.wrk_seconds}s")
            hook_runs.append(run_wrk(port, "/api/v1/webhooks/x", post_lua, threads=args.wrk_threads, conns=conns,
                                     seconds=args.wrk_seconds, meter=meter))
            log(f"    {hook_runs[-1]['ok_rps']} req/s (errors {hook_runs[-1]['errors']})")
        pg["after_webhook_throughput"] = pg_connections()
        livez = max(livez_runs, key=lambda r: r["ok_rps"])
        hook = max(hook_runs, key=lambda r: r["ok_rps"])
        log(f"    PostgreSQL connections to the bench db: {pg['after_webhook_throughput']['total']}")
        meter.start()
        drain_b = wait_drained(max(10.0, min(60.0, args.max_seconds - (time.monotonic() - t_start) - 20)))
        drain_b["cpu_pct_of_core"] = meter.stop()
        log(f"    worker backlog {drain_b['backlog_at_start']} → {drain_b['left']} in {drain_b['waited_s']} s; "
            f"database sessions sampled: {drain_b['pg_session_samples']}; CPU % of a core "
            f"{ {k: round(v) for k, v in drain_b['cpu_pct_of_core'].items()} }")
        procs.check_alive()
        checks = end_state_checks()

        ratio = 100 * hook["ok_rps"] / livez["ok_rps"] if livez["ok_rps"] else None
        efficiency["uvicorn_cpu_ms_per_livez"] = cpu_ms_per(livez["cpu_pct_of_core"], "uvicorn", livez["requests"])
        efficiency["uvicorn_cpu_ms_per_webhook_wrk"] = cpu_ms_per(hook["cpu_pct_of_core"], "uvicorn",
                                                                  hook["requests"])
        res = {
            "started": started.isoformat(timespec="seconds"),
            "setup": {
                "cpus": os.cpu_count(), "background_cpu_pct_before": background,
                "python": platform.python_version(), "accounts": args.accounts,
                "uvicorn_workers": args.uvicorn_workers, "web_env": args.web_env,
                "worker_env": args.worker_env, "celery_pool": args.celery_pool,
                "celery_concurrency": args.celery_concurrency, "log_level": args.log_level,
                "client_ack": "asyncio (uvloop) raw HTTP/1.1 keep-alive, open loop, this process",
                "client_throughput": f"wrk -t{args.wrk_threads} -c{{{args.wrk_connections}}} -d{args.wrk_seconds}s, "
                                     "Lua script making every body unique; best of the connection counts",
                "uvicorn_cmd": " ".join(uvicorn_cmd[1:]), "celery_cmd": " ".join(celery_cmd),
                "git_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                             capture_output=True, text=True).stdout.strip(),
                "git_dirty": bool(subprocess.run(["git", "status", "--porcelain", "--", ".", ":!bench"], cwd=ROOT,
                                                 capture_output=True, text=True).stdout.strip()),
            },
            "warmup": {k: v for k, v in warm.items() if k != "signal_ids"},
            "ack": {k: v for k, v in ack.items() if k != "signal_ids"},
            "low_rate": {"ack": {k: v for k, v in low.items() if k != "signal_ids"}, "fill": low_fill},
            "drain_after_ack": drain_a,
            "fill": fill,
            "throughput_livez": livez,
            "throughput_webhook": hook,
            "throughput_runs": {"livez": livez_runs, "webhook": hook_runs},
            "ratio_pct": round(ratio, 1) if ratio is not None else None,
            "drain_after_throughput": drain_b,
            "checks": checks,
            "postgres_connections": pg,
            "efficiency": efficiency,
        }
        res["targets"] = {
            "ack_p99_ok": (ack["latency_ms"].get("p99") or 1e9) <= 10.0 and ack["statuses"] == {"202": ack["sent"]},
            "throughput_ok": (ratio or 0) >= 60.0,
            "fill_p50_ok": (fill["fill_ms"].get("p50") or 1e9) <= 20.0,
            "fill_p50_unloaded_ok": (low_fill["fill_ms"].get("p50") or 1e9) <= 20.0,
        }
        res["runtime_s"] = round(time.monotonic() - t_start, 1)
        out = RESULTS / f"webhook-{run_id}.json"
        out.write_text(json.dumps(res, indent=2, default=str))
        print_report(res)
        log(f"JSON: {out.relative_to(ROOT)}   server logs: {run_dir.relative_to(ROOT)}/   "
            f"runtime {res['runtime_s']} s")
        return 0 if checks["ok"] else 1
    except (KeyboardInterrupt, Deadline) as exc:
        log(f"stopped: {exc!r}")
        return 130
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("stopping uvicorn and the Celery worker")
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
