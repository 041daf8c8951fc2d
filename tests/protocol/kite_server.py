"""A local Kite Connect v3 server for tests: the real ``kiteconnect.KiteConnect(root=server.url)`` talks to it.

It speaks the documented HTTP API (paths, ``X-Kite-Version: 3``, ``Authorization: token key:token``,
form-encoded order bodies, ``{"status": "success", "data": ...}`` / ``{"status": "error", "error_type":
..., "message": ...}`` bodies, the instruments CSV) and enforces the rules real orders meet: the
contract must be listed and unexpired, quantity a multiple of its lot size and within the freeze
limit, MARKET/SL-M orders need ``market_protection``, no MARKET orders on stock options, a tag of at
most 20 alphanumerics, 10 orders/s and 400/min per API key (HTTP 429 ``NetworkException``).

Tests steer it: ``issue_request_token()`` (the user logging in on Kite), ``expire_tokens()``,
``set_ltp()``, ``add_latency()``, ``fail_next()`` (5xx before or after accepting), ``timeout_next_order()``
(accept, then answer too late), ``throttle_next()`` (429s), ``reject_next_order()`` (accepted, then
REJECTED by the RMS), ``hold_orders`` / ``fill_delay``. Every request is recorded in ``requests``.

Fills are deterministic: a MARKET order (or a marketable LIMIT) fills completely at the symbol's LTP.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

CSV_COLUMNS = ["instrument_token", "exchange_token", "tradingsymbol", "name", "last_price", "expiry", "strike",
               "tick_size", "lot_size", "instrument_type", "segment", "exchange"]
INDEX_NAMES = {"NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY", "NIFTYNXT50", "SENSEX", "BANKEX"}
FREEZE = {"NIFTY": 1800, "BANKNIFTY": 600, "FINNIFTY": 1800, "MIDCPNIFTY": 2800}
PRODUCTS = {"NFO": {"NRML", "MIS"}, "BFO": {"NRML", "MIS"}, "NSE": {"CNC", "MIS", "MTF"}, "BSE": {"CNC", "MIS"}}
VARIETIES = {"regular", "amo", "co", "iceberg", "auction"}
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
WEEKLY_MONTH_CODE = "123456789OND"
TAG_RE = re.compile(r"^[A-Za-z0-9]{1,20}$")
MARKET_DATE = date(2025, 12, 24)  # the simulated exchange's "today" (a Wednesday)


# --- test data: instruments as Kite lists them --------------------------------------------------------

LOGIN_PAGE = "https://kite.zerodha.com/connect/login?api_key=kitetestkey&v=3"  # its login page, as Kite's


def tuesdays(start: date, end: date) -> list[date]:
    day = start + timedelta(days=(1 - start.weekday()) % 7)
    out = []
    while day <= end:
        out.append(day)
        day += timedelta(days=7)
    return out


def option_symbol(name: str, expiry: date, strike: int, option_type: str, *, monthly: bool) -> str:
    """The exchange's own spelling (the server is the exchange; the code under test never builds this)."""
    yy = expiry.strftime("%y")
    if monthly:
        return f"{name}{yy}{MONTHS[expiry.month - 1]}{strike}{option_type}"
    return f"{name}{yy}{WEEKLY_MONTH_CODE[expiry.month - 1]}{expiry.day:02d}{strike}{option_type}"


def _is_last_of_month(expiry: date, expiries: list[date]) -> bool:
    return not any(e.year == expiry.year and e.month == expiry.month and e > expiry for e in expiries)


def option_chain(name: str, expiries: list[date], strikes, *, lot_size, exchange: str = "NFO",
                 weekly: bool = True) -> list[dict]:
    """CE and PE rows for every expiry × strike; ``lot_size`` is a number or a function of the expiry."""
    rows = []
    for expiry in expiries:
        monthly = _is_last_of_month(expiry, expiries)
        if not weekly and not monthly:
            continue
        lot = lot_size(expiry) if callable(lot_size) else lot_size
        for strike in strikes:
            for option_type in ("CE", "PE"):
                rows.append({
                    "tradingsymbol": option_symbol(name, expiry, strike, option_type, monthly=monthly), "name": name,
                    "last_price": 0, "expiry": expiry.isoformat(), "strike": float(strike), "tick_size": 0.05,
                    "lot_size": lot, "instrument_type": option_type, "segment": f"{exchange}-OPT", "exchange": exchange,
                })
    return rows


def nifty_lot_size(expiry: date) -> int:
    return 75 if expiry.year <= 2025 else 65


def sample_instruments() -> list[dict]:
    """NIFTY weeklies (Tuesdays) from December 2025 to February 2026 — lot 75 for 2025 expiries, 65 for
    2026 ones — strikes 24000–26000; BANKNIFTY monthlies; RELIANCE stock options and equity; the index."""
    nifty_expiries = tuesdays(date(2025, 12, 2), date(2026, 2, 24))
    rows = option_chain("NIFTY", nifty_expiries, range(24000, 26001, 100), lot_size=nifty_lot_size)
    rows += [{"tradingsymbol": f"NIFTY{e.strftime('%y')}{MONTHS[e.month - 1]}FUT", "name": "NIFTY", "last_price": 0,
              "expiry": e.isoformat(), "strike": 0.0, "tick_size": 0.1, "lot_size": nifty_lot_size(e),
              "instrument_type": "FUT", "segment": "NFO-FUT", "exchange": "NFO"}
             for e in nifty_expiries if _is_last_of_month(e, nifty_expiries)]
    rows += option_chain("BANKNIFTY", nifty_expiries, range(56000, 58001, 500), lot_size=35, weekly=False)
    rows += option_chain("RELIANCE", nifty_expiries, range(1400, 1601, 20), lot_size=500, weekly=False)
    rows += [
        {"tradingsymbol": "RELIANCE", "name": "RELIANCE INDUSTRIES", "last_price": 0, "expiry": "", "strike": 0.0,
         "tick_size": 0.1, "lot_size": 1, "instrument_type": "EQ", "segment": "NSE", "exchange": "NSE"},
        {"tradingsymbol": "NIFTY 50", "name": "NIFTY 50", "last_price": 0, "expiry": "", "strike": 0.0,
         "tick_size": 0.0, "lot_size": 0, "instrument_type": "EQ", "segment": "INDICES", "exchange": "NSE"},
    ]
    return rows


def _with_tokens(rows: list[dict]) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        token = 10_000_000 + i * 7
        out.append({"instrument_token": token, "exchange_token": token // 256, **row})
    return out


def instruments_csv(rows: list[dict]) -> str:
    """Kite's layout: a header line, ``name`` quoted, empty expiry for non-derivatives."""
    def cell(column: str, value) -> str:
        if column == "name":
            return '"' + str(value or "").replace('"', '""') + '"'
        return "" if value in (None, "") else str(value)

    lines = [",".join(CSV_COLUMNS)]
    lines += [",".join(cell(c, row[c]) for c in CSV_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


# --- the server ---------------------------------------------------------------------------------------

@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    headers: dict[str, str]
    at: float
    proxied: bool = False
    status: int | None = None

    def one(self, name: str) -> str | None:
        values = self.form.get(name) or self.query.get(name)
        return values[0] if values else None


@dataclass
class Fault:
    kind: str  # "latency" | "status" | "throttle" | "timeout"
    method: str | None
    path_prefix: str
    remaining: int | None  # None: until cleared
    status: int = 503
    accept: bool = False
    seconds: float = 0.0
    html: bool = False
    skip: int = 0  # matching requests to let through before the fault applies

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and path.startswith(self.path_prefix) and (
            self.remaining is None or self.remaining > 0)


class KiteApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "KiteLocal/3"

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        return

    def do_GET(self):
        self.server.kite._handle(self, "GET")

    def do_POST(self):
        self.server.kite._handle(self, "POST")

    def do_PUT(self):
        self.server.kite._handle(self, "PUT")

    def do_DELETE(self):
        self.server.kite._handle(self, "DELETE")


def _num(value):
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"not JSON serializable: {value!r}")


class KiteServer:
    def __init__(self, *, api_key: str = "kitetestkey", api_secret: str = "kitetestsecret", user_id: str = "AB1234",
                 instruments: list[dict] | None = None, today: date = MARKET_DATE,
                 default_ltp: Decimal = Decimal("100"), funds: Decimal = Decimal("500000"),
                 order_limits: tuple[tuple[int, float], ...] = ((10, 1.0), (400, 60.0)),
                 freeze: dict[str, int] | None = None):
        self.api_key, self.api_secret, self.user_id = api_key, api_secret, user_id
        self.today = today
        self.default_ltp = default_ltp
        self.funds = funds
        self.order_limits = order_limits
        self.freeze = dict(FREEZE if freeze is None else freeze)
        self.hold_orders = False  # True: every order rests OPEN
        self.fill_delay = 0.0  # seconds an order stays OPEN before filling
        self.requests: list[Recorded] = []
        self.orders: list[dict] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._faults: list[Fault] = []
        self._rejects: deque[str] = deque()
        self._request_tokens: set[str] = set()
        self._tokens: dict[str, str] = {}  # access token -> api key
        self._ltp: dict[str, Decimal] = {}
        self._order_ids = itertools.count(251224000000001)
        self._order_times: dict[str, deque[float]] = {}
        self._history: dict[str, list[dict]] = {}
        self.set_instruments(sample_instruments() if instruments is None else instruments)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> KiteServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.kite = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kite-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping on a latency/timeout fault
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> KiteServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # test controls ---------------------------------------------------------------------------------------
    def set_instruments(self, rows: list[dict]) -> None:
        rows = rows if rows and "instrument_token" in rows[0] else _with_tokens(rows)
        with self._lock:
            self.instruments = rows
            self._by_key = {f"{r['exchange']}:{r['tradingsymbol']}": r for r in rows}

    def instrument(self, exchange: str, tradingsymbol: str) -> dict | None:
        return self._by_key.get(f"{exchange}:{tradingsymbol}")

    def issue_request_token(self) -> str:
        """What Kite's login page hands our redirect URL after the user logs in."""
        token = secrets.token_hex(16)
        with self._lock:
            self._request_tokens.add(token)
        return token

    def grant_access_token(self, api_key: str | None = None) -> str:
        token = secrets.token_hex(16)
        with self._lock:
            self._tokens[token] = api_key or self.api_key
        return token

    def expire_tokens(self) -> None:
        """Kite's 6 a.m. flush (or a logout elsewhere): every access token dies."""
        with self._lock:
            self._tokens.clear()

    def set_ltp(self, key: str, price) -> None:
        with self._lock:
            self._ltp[key] = Decimal(str(price))

    def ltp(self, exchange: str, tradingsymbol: str) -> Decimal:
        return self._ltp.get(f"{exchange}:{tradingsymbol}", self.default_ltp)

    def add_latency(self, seconds: float, *, path_prefix: str = "/", method: str | None = None) -> None:
        self._add(Fault("latency", method, path_prefix, None, seconds=seconds))

    def fail_next(self, n: int = 1, *, status: int = 503, accept: bool = False, path_prefix: str = "/orders",
                  method: str | None = "POST", html: bool = False, skip: int = 0) -> None:
        """Answer the next ``n`` matching requests (after ``skip``) with a 5xx; ``accept``: process them
        first (the order exists)."""
        self._add(Fault("status", method, path_prefix, n, status=status, accept=accept, html=html, skip=skip))

    def timeout_next_order(self, seconds: float = 3.0, n: int = 1, *, skip: int = 0) -> None:
        """Accept the next ``n`` orders (after ``skip`` others), then hold each answer for ``seconds``
        (past the client's timeout)."""
        self._add(Fault("timeout", "POST", "/orders", n, seconds=seconds, skip=skip))

    def throttle_next(self, n: int, *, path_prefix: str = "/orders", method: str | None = "POST",
                      skip: int = 0) -> None:
        self._add(Fault("throttle", method, path_prefix, n, status=429, skip=skip))

    def reject_next_order(self, message: str) -> None:
        """The next order is accepted (an order_id comes back), then the RMS rejects it."""
        with self._lock:
            self._rejects.append(message)

    def reset_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take(self, kind: str, method: str, path: str, *, accept: bool | None = None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.matches(method, path) and (accept is None or fault.accept == accept):
                    if fault.skip:
                        fault.skip -= 1
                        continue
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    # assertions helpers -----------------------------------------------------------------------------------
    def order_posts(self) -> list[Recorded]:
        """Every order placement request that reached the server (answered or not)."""
        return [r for r in self.requests if r.method == "POST" and re.fullmatch(r"/orders/[a-z]+", r.path)]

    def tagged(self, tag: str) -> list[dict]:
        return [o for o in self.orders if o["tag"] == tag]

    def requests_to(self, path: str, method: str = "GET") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    @staticmethod
    def max_in_window(times: list[float], window: float = 1.0) -> int:
        times = sorted(times)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    # HTTP -------------------------------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        target = handler.path
        parts = urlsplit(target)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        form = parse_qs(body.decode(), keep_blank_values=True) if "form" in (
            handler.headers.get("Content-Type") or "") else {}
        record = Recorded(method=method, path=parts.path, query=parse_qs(parts.query, keep_blank_values=True),
                          form=form, headers=dict(handler.headers.items()), at=time.monotonic(),
                          proxied=target.startswith("http"))
        with self._lock:
            self.requests.append(record)
        for fault in [f for f in list(self._faults) if f.kind == "latency" and f.matches(method, record.path)]:
            self._stop.wait(fault.seconds)

        if self._take("throttle", method, record.path):
            return self._send_error(handler, record, KiteApiError(429, "NetworkException", "Too many requests"))
        before = self._take("status", method, record.path, accept=False)
        if before:
            return self._send_fault(handler, record, before)
        try:
            status, content_type, payload = self._route(method, record)
        except KiteApiError as exc:
            status, content_type, payload = exc.status, "application/json", {
                "status": "error", "message": exc.message, "data": None, "error_type": exc.error_type}
        after = self._take("status", method, record.path, accept=True)
        if after:
            return self._send_fault(handler, record, after)
        if status == 200 and method == "POST" and record.path.startswith("/orders/"):
            timeout = self._take("timeout", method, record.path)
            if timeout:
                self._stop.wait(timeout.seconds)
        if content_type == "application/json" and status == 200:
            payload = {"status": "success", "data": payload}
        self._send(handler, record, status, content_type, payload)

    def _send_fault(self, handler, record: Recorded, fault: Fault) -> None:
        if fault.html:
            html = f"<html><body><h1>{fault.status} Bad Gateway</h1></body></html>"
            return self._send(handler, record, fault.status, "text/html", html)
        error_type = "NetworkException" if fault.status in (502, 503, 504) else "GeneralException"
        message = "Gateway timed out" if fault.status == 504 else "Something went wrong. Please try again."
        self._send_error(handler, record, KiteApiError(fault.status, error_type, message))

    def _send_error(self, handler, record: Recorded, exc: KiteApiError) -> None:
        self._send(handler, record, exc.status, "application/json",
                   {"status": "error", "message": exc.message, "data": None, "error_type": exc.error_type})

    def _send(self, handler, record: Recorded, status: int, content_type: str, payload) -> None:
        record.status = status
        if isinstance(payload, str):
            body = payload.encode()
        else:
            body = json.dumps(payload, default=_num).encode()
        # Kite sends the instruments dump gzipped; requests undoes Content-Encoding by itself.
        gzipped = content_type == "text/csv" and "gzip" in (record.headers.get("Accept-Encoding") or "")
        if gzipped:
            body = gzip.compress(body)
        try:
            handler.send_response(status)
            charset = "" if "json" in content_type else "; charset=utf-8"
            handler.send_header("Content-Type", content_type + charset)
            if gzipped:
                handler.send_header("Content-Encoding", "gzip")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): the order stays accepted

    # routes -----------------------------------------------------------------------------------------------
    def _route(self, method: str, r: Recorded):
        path = r.path
        if path == "/session/token" and method == "POST":
            return 200, "application/json", self._session(r)
        api_key = self._auth(r)
        if path == "/instruments" and method == "GET":
            return 200, "text/csv", instruments_csv(self.instruments)
        if (m := re.fullmatch(r"/instruments/([A-Z]+)", path)) and method == "GET":
            return 200, "text/csv", instruments_csv([i for i in self.instruments if i["exchange"] == m.group(1)])
        if path == "/session/token" and method == "DELETE":
            with self._lock:
                self._tokens.pop(r.one("access_token") or "", None)
            return 200, "application/json", True
        if path == "/user/profile" and method == "GET":
            return 200, "application/json", self._profile()
        if path == "/user/margins" and method == "GET":
            return 200, "application/json", {"equity": self._margins(), "commodity": self._margins(Decimal(0))}
        if path == "/orders" and method == "GET":
            with self._lock:
                self._settle()
                return 200, "application/json", [self._public(o) for o in self.orders]
        if (m := re.fullmatch(r"/orders/([a-z]+)", path)) and method == "POST":
            return 200, "application/json", self._place(api_key, m.group(1), r)
        if (m := re.fullmatch(r"/orders/(\d+)", path)) and method == "GET":
            return 200, "application/json", self._order_history(m.group(1))
        if (m := re.fullmatch(r"/orders/([a-z]+)/(\d+)", path)) and method == "DELETE":
            return 200, "application/json", self._cancel(m.group(2))
        if path == "/portfolio/positions" and method == "GET":
            return 200, "application/json", self._positions()
        if path == "/quote/ltp" and method == "GET":
            return 200, "application/json", self._quote_ltp(r.query.get("i", []))
        raise KiteApiError(404, "GeneralException", "Route not found")

    def _auth(self, r: Recorded) -> str:
        if r.headers.get("X-Kite-Version") != "3":
            raise KiteApiError(400, "InputException", "Missing or invalid X-Kite-Version header (expected 3)")
        header = r.headers.get("Authorization", "")
        m = re.fullmatch(r"token ([^:\s]+):(\S+)", header)
        with self._lock:
            valid = bool(m) and self._tokens.get(m.group(2)) == m.group(1)
        if not valid:
            raise KiteApiError(403, "TokenException", "Incorrect `api_key` or `access_token`.")
        return m.group(1)

    def _session(self, r: Recorded) -> dict:
        api_key, request_token, checksum = r.one("api_key"), r.one("request_token"), r.one("checksum")
        if api_key != self.api_key:
            raise KiteApiError(403, "TokenException", "Invalid `api_key`.")
        expected = hashlib.sha256(f"{api_key}{request_token}{self.api_secret}".encode()).hexdigest()
        with self._lock:
            if request_token not in self._request_tokens:
                raise KiteApiError(403, "TokenException", "Token is invalid or has expired.")
            if checksum != expected:
                raise KiteApiError(403, "TokenException", "Invalid checksum")
            self._request_tokens.discard(request_token)  # single use
        access_token = self.grant_access_token(api_key)
        return {**self._profile(), "api_key": api_key, "access_token": access_token,
                "public_token": secrets.token_hex(8), "refresh_token": "", "enctoken": secrets.token_hex(8),
                "login_time": f"{self.today.isoformat()} 08:55:01"}

    def _profile(self) -> dict:
        return {"user_id": self.user_id, "user_type": "individual", "email": "trader@example.com",
                "user_name": "Test Trader", "user_shortname": "Trader", "broker": "ZERODHA",
                "exchanges": ["NSE", "NFO", "BSE", "BFO"], "products": ["CNC", "NRML", "MIS"],
                "order_types": ["MARKET", "LIMIT", "SL", "SL-M"], "avatar_url": None,
                "meta": {"demat_consent": "physical"}}

    def _margins(self, cash: Decimal | None = None) -> dict:
        cash = self.funds if cash is None else cash
        return {"enabled": True, "net": cash,
                "available": {"adhoc_margin": 0, "cash": cash, "opening_balance": cash, "live_balance": cash,
                              "collateral": 0, "intraday_payin": 0},
                "utilised": {"debits": 0, "exposure": 0, "m2m_realised": 0, "m2m_unrealised": 0,
                             "option_premium": 0, "payout": 0, "span": 0, "holding_sales": 0, "turnover": 0}}

    def _rate_limited(self, api_key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            times = self._order_times.setdefault(api_key, deque())
            longest = max(period for _, period in self.order_limits)
            while times and times[0] <= now - longest:
                times.popleft()
            for count, period in self.order_limits:
                if sum(1 for t in times if t > now - period) >= count:
                    return True
            times.append(now)
            return False

    def _place(self, api_key: str, variety: str, r: Recorded) -> dict:
        if self._rate_limited(api_key):
            raise KiteApiError(429, "NetworkException", "Too many requests")
        f = {k: v[0] for k, v in r.form.items()}
        if variety not in VARIETIES:
            raise KiteApiError(400, "InputException", "Invalid `variety`.")
        for name in ("exchange", "tradingsymbol", "transaction_type", "quantity", "product", "order_type"):
            if not f.get(name):
                raise KiteApiError(400, "InputException", f"Missing `{name}`.")
        inst = self.instrument(f["exchange"], f["tradingsymbol"])
        if inst is None or (inst["expiry"] and date.fromisoformat(inst["expiry"]) < self.today):
            raise KiteApiError(400, "InputException",
                               "The instrument you are placing an order for has either expired or does not exist.")
        if f["transaction_type"] not in ("BUY", "SELL"):
            raise KiteApiError(400, "InputException", "Invalid `transaction_type`.")
        if f["product"] not in PRODUCTS.get(f["exchange"], set()):
            raise KiteApiError(400, "InputException", f"Invalid `product` {f['product']} for {f['exchange']}.")
        if not re.fullmatch(r"\d+", f["quantity"]) or int(f["quantity"]) <= 0:
            raise KiteApiError(400, "InputException", "Invalid `quantity`.")
        qty, lot = int(f["quantity"]), int(inst["lot_size"]) or 1
        if qty % lot:
            raise KiteApiError(400, "InputException",
                               f"Quantity should be a multiple of lot size ({lot}) for {f['tradingsymbol']}.")
        freeze = self.freeze.get(inst["name"]) if inst["instrument_type"] in ("CE", "PE", "FUT") else None
        if freeze and qty > freeze:
            raise KiteApiError(400, "InputException",
                               f"Quantity {qty} exceeds the freeze limit of {freeze} for {inst['name']}. "
                               "Split the order into smaller orders.")
        order_type = f["order_type"]
        if order_type not in ("MARKET", "LIMIT", "SL", "SL-M"):
            raise KiteApiError(400, "InputException", "Invalid `order_type`.")
        price = Decimal(f.get("price") or 0)
        trigger = Decimal(f.get("trigger_price") or 0)
        if order_type in ("LIMIT", "SL") and price <= 0:
            raise KiteApiError(400, "InputException", "Invalid `price`.")
        if order_type in ("SL", "SL-M") and trigger <= 0:
            raise KiteApiError(400, "InputException", "Invalid `trigger_price`.")
        is_option = inst["instrument_type"] in ("CE", "PE")
        if order_type == "MARKET" and is_option and inst["name"] not in INDEX_NAMES:
            raise KiteApiError(400, "InputException",
                               "Market orders are blocked for stock options due to illiquidity. "
                               "Place a limit order instead.")
        protection = f.get("market_protection")
        if order_type in ("MARKET", "SL-M"):
            if protection in (None, "", "0"):
                raise KiteApiError(400, "InputException",
                                   "Market orders without market protection are not allowed via API. "
                                   "Please set market protection or use a Limit order.")
            try:
                value = Decimal(protection)
            except ArithmeticError:
                value = Decimal(-2)
            if not (value == -1 or 0 < value <= 100):
                raise KiteApiError(400, "InputException",
                                   f"Invalid request (failed to decode market_protection, got: {protection})")
        tag = f.get("tag")
        if tag is not None and not TAG_RE.fullmatch(tag):
            raise KiteApiError(400, "InputException", "Invalid `tag`: up to 20 alphanumeric characters.")
        with self._lock:
            order_id = str(next(self._order_ids))
            ltp = self.ltp(f["exchange"], f["tradingsymbol"])
            order = {
                "placed_by": self.user_id, "order_id": order_id, "exchange_order_id": None, "parent_order_id": None,
                "status": "OPEN", "status_message": None, "status_message_raw": None,
                "order_timestamp": f"{self.today.isoformat()} 10:00:00", "exchange_update_timestamp": None,
                "exchange_timestamp": None, "variety": variety, "modified": False, "exchange": f["exchange"],
                "tradingsymbol": f["tradingsymbol"], "instrument_token": inst["instrument_token"],
                "order_type": order_type, "transaction_type": f["transaction_type"],
                "validity": f.get("validity", "DAY"),
                "validity_ttl": 0, "product": f["product"], "quantity": qty, "disclosed_quantity": 0,
                "price": price, "trigger_price": trigger, "average_price": 0, "filled_quantity": 0,
                "pending_quantity": qty, "cancelled_quantity": 0, "market_protection": Decimal(protection or 0),
                "meta": {}, "tag": tag, "tags": [tag] if tag else [], "guid": secrets.token_hex(6),
                "_fill_at": None, "_ltp": ltp,
            }
            self._history[order_id] = [{**order, "status": "PUT ORDER REQ RECEIVED"},
                                       {**order, "status": "VALIDATION PENDING"}]
            if self._rejects:
                self._transition(order, "REJECTED", message=self._rejects.popleft())
            elif order_type == "MARKET" or (order_type == "LIMIT" and (
                    price >= ltp if f["transaction_type"] == "BUY" else price <= ltp)):
                if self.hold_orders:
                    self._transition(order, "OPEN")
                elif self.fill_delay:
                    order["_fill_at"] = time.monotonic() + self.fill_delay
                    self._transition(order, "OPEN")
                else:
                    self._fill(order)
            elif order_type in ("SL", "SL-M"):
                self._transition(order, "TRIGGER PENDING")
            else:
                self._transition(order, "OPEN")
            self.orders.append(order)
        return {"order_id": order_id}

    def _transition(self, order: dict, status: str, *, message: str | None = None) -> None:
        order["status"] = status
        if message:
            order["status_message"] = order["status_message_raw"] = message
        if status in ("OPEN", "TRIGGER PENDING", "COMPLETE") and not order["exchange_order_id"]:
            order["exchange_order_id"] = str(1100000000000000 + int(order["order_id"]) % 10**9)
        self._history[order["order_id"]].append(self._public(order))

    def _fill(self, order: dict) -> None:
        order.update(average_price=order["_ltp"], filled_quantity=order["quantity"], pending_quantity=0,
                     exchange_timestamp=f"{self.today.isoformat()} 10:00:01")
        self._transition(order, "COMPLETE")

    def _settle(self) -> None:
        now = time.monotonic()
        for order in self.orders:
            if order["status"] == "OPEN" and order["_fill_at"] and order["_fill_at"] <= now and not self.hold_orders:
                self._fill(order)

    @staticmethod
    def _public(order: dict) -> dict:
        return {k: v for k, v in order.items() if not k.startswith("_")}

    def _order_history(self, order_id: str) -> list[dict]:
        with self._lock:
            self._settle()
            if order_id not in self._history:
                raise KiteApiError(400, "InputException", "Couldn't find that `order_id`.")
            return [self._public(h) for h in self._history[order_id]]

    def _cancel(self, order_id: str) -> dict:
        with self._lock:
            self._settle()
            order = next((o for o in self.orders if o["order_id"] == order_id), None)
            if order is None:
                raise KiteApiError(400, "InputException", "Couldn't find that `order_id`.")
            if order["status"] not in ("OPEN", "TRIGGER PENDING"):
                raise KiteApiError(400, "InputException",
                                   f"Order cannot be cancelled as it is {order['status'].lower()}.")
            order["cancelled_quantity"] = order["pending_quantity"]
            order["pending_quantity"] = 0
            self._transition(order, "CANCELLED")
        return {"order_id": order_id}

    def _positions(self) -> dict:
        with self._lock:
            self._settle()
            books: dict[tuple, dict] = {}
            for o in self.orders:
                if not o["filled_quantity"]:
                    continue
                key = (o["exchange"], o["tradingsymbol"], o["product"])
                b = books.setdefault(key, {"bq": 0, "bv": Decimal(0), "sq": 0, "sv": Decimal(0),
                                           "token": o["instrument_token"]})
                value = o["average_price"] * o["filled_quantity"]
                if o["transaction_type"] == "BUY":
                    b["bq"] += o["filled_quantity"]
                    b["bv"] += value
                else:
                    b["sq"] += o["filled_quantity"]
                    b["sv"] += value
            net = []
            for (exchange, symbol, product), b in books.items():
                qty = b["bq"] - b["sq"]
                last = self.ltp(exchange, symbol)
                buy_price = b["bv"] / b["bq"] if b["bq"] else Decimal(0)
                sell_price = b["sv"] / b["sq"] if b["sq"] else Decimal(0)
                avg = buy_price if qty > 0 else sell_price if qty < 0 else Decimal(0)
                pnl = (b["sv"] - b["bv"]) + qty * last
                net.append({
                    "tradingsymbol": symbol, "exchange": exchange, "instrument_token": b["token"], "product": product,
                    "quantity": qty, "overnight_quantity": 0, "multiplier": 1, "average_price": avg,
                    "close_price": 0, "last_price": last, "value": b["sv"] - b["bv"], "pnl": pnl, "m2m": pnl,
                    "unrealised": pnl, "realised": 0, "buy_quantity": b["bq"], "buy_price": buy_price,
                    "buy_value": b["bv"], "sell_quantity": b["sq"], "sell_price": sell_price, "sell_value": b["sv"],
                    "day_buy_quantity": b["bq"], "day_buy_price": buy_price, "day_buy_value": b["bv"],
                    "day_sell_quantity": b["sq"], "day_sell_price": sell_price, "day_sell_value": b["sv"],
                })
        return {"net": net, "day": [dict(p) for p in net]}

    def _quote_ltp(self, keys: list[str]) -> dict:
        if len(keys) > 1000:
            raise KiteApiError(400, "InputException", "Too many instruments (at most 1000 per request).")
        out = {}
        for key in keys:
            exchange, _, symbol = key.partition(":")
            inst = self.instrument(exchange, symbol)
            if inst is not None:
                out[key] = {"instrument_token": inst["instrument_token"], "last_price": self.ltp(exchange, symbol)}
        return out


@pytest.fixture
def kite_server():
    """A running ``KiteServer`` for one test."""
    with KiteServer() as server:
        yield server


@contextmanager
def kite_market_at(settings, day: date, *, hour: int = 10):
    """A Kite server for ``day`` with the clock at ``hour`` IST on it, and TradeFlow pointed at it (live trading on,
    short fill wait and rate-limit back-off for tests)."""
    import time_machine

    when = datetime.combine(day, datetime.min.time(), tzinfo=ZoneInfo("Asia/Kolkata")).replace(hour=hour)
    with time_machine.travel(when, tick=True), KiteServer(today=day) as server:
        settings.KITE_API_ROOT = server.url
        settings.KITE_FILL_WAIT = 1.0
        settings.KITE_RATE_BACKOFF = 0.05
        settings.LIVE_TRADING_ENABLED = True
        yield server
