"""A local Binance for tests: spot (/api/v3), USDⓈ-M futures (/fapi) and /sapi/v1/account/apiRestrictions.

The real ``binance.Client`` talks to it over loopback (point its ``API_URL``/``FUTURES_URL``/``MARGIN_API_URL``
at ``server.url``). It checks what Binance checks and answers the way Binance answers:

- SIGNED endpoints: ``X-MBX-APIKEY`` (-2014 format, -2015 unknown/permission), ``timestamp``/``recvWindow``
  (-1021, ``timestamp < serverTime + 1000 and serverTime - timestamp <= recvWindow``), and the HMAC-SHA256 of
  ``totalParams`` = raw query string + raw body with the trailing ``signature`` removed (-1022).
- Filters from its own exchangeInfo: PRICE_FILTER tick, LOT_SIZE / MARKET_LOT_SIZE step and minQty, NOTIONAL /
  MIN_NOTIONAL. Spot answers -1013 "Filter failure: …"; futures -1111 (step), -4004 (min qty), -4014 (tick),
  -4164 (notional). ``newClientOrderId`` pattern (-1100) and uniqueness among *open* orders (spot -2010
  "Duplicate order sent.", futures -4116). Conditional types on /fapi/v1/order answer -4120 (algoOrder only).
- Request weight per minute and order counts, returned as ``X-MBX-USED-WEIGHT-1M`` / ``X-MBX-ORDER-COUNT-*``;
  over the weight limit 429 (-1003), and after ``ban_after_429`` more requests an IP ban: 418 until it ends.

Faults are injected per test with :meth:`BinanceServer.fault`; every request is recorded in ``server.log``.
Market orders fill at once at ``server.prices``; futures keep one-way positions per symbol.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

ZERO = Decimal("0")
CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
CONDITIONAL = {"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
ORDER_LIMITS = {"spot": ((10, 100), (86400, 200_000)), "futures": ((10, 300), (60, 1200))}
COUNT_HEADERS = {"spot": ("X-MBX-ORDER-COUNT-10S", "X-MBX-ORDER-COUNT-1D"),
                 "futures": ("X-MBX-ORDER-COUNT-10S", "X-MBX-ORDER-COUNT-1M")}


class ApiError(Exception):
    def __init__(self, status: int, code: int, msg: str, headers: dict | None = None):
        super().__init__(msg)
        self.status, self.code, self.msg, self.headers = status, code, msg, headers or {}


def D(value) -> Decimal:  # noqa: N802
    return Decimal(str(value))


def fmt(value: Decimal | None, places: int = 8) -> str:
    value = value or ZERO
    return format(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN), "f")


def plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _multiple(value: Decimal, step: Decimal, base: Decimal = ZERO) -> bool:
    return step == 0 or (value - base) % step == 0


@dataclass
class Spec:
    """One symbol's trading rules, rendered into exchangeInfo in Binance's shapes."""

    symbol: str
    base: str
    quote: str
    tick: str
    step: str
    min_qty: str
    min_notional: str
    max_qty: str = "9000"
    market_step: str | None = None  # None: same as LOT_SIZE; spot uses "0" (no market step)
    market_min: str | None = None
    market_max: str = "120"


SPOT_SPECS = [
    Spec("BTCUSDT", "BTC", "USDT", "0.01", "0.00001", "0.00001", "5", market_step="0", market_min="0",
         market_max="90"),
    Spec("ETHUSDT", "ETH", "USDT", "0.01", "0.0001", "0.0001", "5", market_step="0", market_min="0",
         market_max="2000"),
    Spec("SOLUSDT", "SOL", "USDT", "0.01", "0.001", "0.001", "5", market_step="0", market_min="0",
         market_max="20000"),
]
FUTURES_SPECS = [
    Spec("BTCUSDT", "BTC", "USDT", "0.10", "0.001", "0.001", "100", max_qty="1000"),
    Spec("ETHUSDT", "ETH", "USDT", "0.01", "0.001", "0.001", "20", max_qty="10000", market_max="2000"),
    Spec("SOLUSDT", "SOL", "USDT", "0.01", "1", "1", "5", max_qty="1000000", market_max="5000"),
]


def spot_symbol_info(spec: Spec) -> dict:
    return {
        "symbol": spec.symbol, "status": "TRADING", "baseAsset": spec.base, "baseAssetPrecision": 8,
        "quoteAsset": spec.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
                       "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False, "permissions": [], "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": fmt(D(spec.tick)), "maxPrice": "1000000.00000000",
             "tickSize": fmt(D(spec.tick))},
            {"filterType": "LOT_SIZE", "minQty": fmt(D(spec.min_qty)), "maxQty": fmt(D(spec.max_qty)),
             "stepSize": fmt(D(spec.step))},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {"filterType": "MARKET_LOT_SIZE", "minQty": fmt(D(spec.market_min or "0")),
             "maxQty": fmt(D(spec.market_max)), "stepSize": fmt(D(spec.market_step or "0"))},
            {"filterType": "NOTIONAL", "minNotional": fmt(D(spec.min_notional)), "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
        ],
    }


def futures_symbol_info(spec: Spec) -> dict:
    return {
        "symbol": spec.symbol, "pair": spec.symbol, "contractType": "PERPETUAL", "status": "TRADING",
        "baseAsset": spec.base, "quoteAsset": spec.quote, "marginAsset": spec.quote,
        "pricePrecision": max(-D(spec.tick).normalize().as_tuple().exponent, 0),
        "quantityPrecision": max(-D(spec.step).normalize().as_tuple().exponent, 0),
        "underlyingType": "COIN", "triggerProtect": "0.0500", "liquidationFee": "0.012500",
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                       "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": spec.tick, "maxPrice": "4529764", "tickSize": spec.tick},
            {"filterType": "LOT_SIZE", "minQty": spec.min_qty, "maxQty": spec.max_qty, "stepSize": spec.step},
            {"filterType": "MARKET_LOT_SIZE", "minQty": spec.market_min or spec.min_qty,
             "maxQty": spec.market_max, "stepSize": spec.market_step or spec.step},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": spec.min_notional},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
             "multiplierDecimal": "4"},
        ],
    }


@dataclass
class Account:
    api_key: str
    secret: str
    restrictions: dict
    spot: dict[str, list[Decimal]] = field(default_factory=dict)  # asset -> [free, locked]
    wallet: Decimal = Decimal("10000")  # futures USDT wallet balance
    positions: dict[str, list[Decimal]] = field(default_factory=dict)  # symbol -> [amt, entry]
    leverage: dict[str, int] = field(default_factory=dict)
    margin_type: dict[str, str] = field(default_factory=dict)
    dual_side: bool = False  # Hedge Mode (positionSide LONG/SHORT) instead of One-way (BOTH)
    orders: dict[str, list[dict]] = field(default_factory=lambda: {"spot": [], "futures": []})
    algo: list[dict] = field(default_factory=list)
    order_lists: list[dict] = field(default_factory=list)
    order_times: dict[str, list[float]] = field(default_factory=lambda: {"spot": [], "futures": []})
    trades: list[dict] = field(default_factory=list)  # futures fills, as /fapi/v1/userTrades lists them


@dataclass
class Recorded:
    method: str
    path: str
    params: dict
    api_key: str
    status: int = 0
    code: int | None = None


@dataclass
class Fault:
    kind: str
    method: str | None
    path: str | None
    times: int
    delay: float = 0.0
    status: int = 0
    code: int = 0
    msg: str = ""
    retry_after: int = 0
    seconds: int = 0


@dataclass
class Route:
    domain: str  # "spot" | "futures" (sapi counts with spot)
    weight: int
    signed: bool
    handler: str
    order: bool = False


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/api/v3/ping"): Route("spot", 1, False, "ping"),
    ("GET", "/api/v3/time"): Route("spot", 1, False, "time"),
    ("GET", "/api/v3/exchangeInfo"): Route("spot", 20, False, "spot_exchange_info"),
    ("GET", "/api/v3/ticker/price"): Route("spot", 4, False, "spot_ticker"),
    ("GET", "/api/v3/account"): Route("spot", 20, True, "spot_account"),
    ("POST", "/api/v3/order"): Route("spot", 1, True, "spot_order_new", order=True),
    ("GET", "/api/v3/order"): Route("spot", 4, True, "spot_order_get"),
    ("DELETE", "/api/v3/order"): Route("spot", 1, True, "spot_order_cancel"),
    ("GET", "/api/v3/openOrders"): Route("spot", 6, True, "spot_open_orders"),
    ("DELETE", "/api/v3/openOrders"): Route("spot", 1, True, "spot_cancel_all"),
    ("POST", "/api/v3/orderList/oco"): Route("spot", 1, True, "spot_oco_new", order=True),
    ("GET", "/sapi/v1/account/apiRestrictions"): Route("spot", 1, True, "api_restrictions"),
    ("GET", "/fapi/v1/ping"): Route("futures", 1, False, "ping"),
    ("GET", "/fapi/v1/time"): Route("futures", 1, False, "time"),
    ("GET", "/fapi/v1/exchangeInfo"): Route("futures", 1, False, "futures_exchange_info"),
    ("GET", "/fapi/v1/ticker/price"): Route("futures", 2, False, "futures_ticker"),
    ("GET", "/fapi/v2/ticker/price"): Route("futures", 2, False, "futures_ticker"),
    ("POST", "/fapi/v1/leverage"): Route("futures", 1, True, "futures_leverage"),
    ("POST", "/fapi/v1/marginType"): Route("futures", 1, True, "futures_margin_type"),
    ("GET", "/fapi/v1/positionSide/dual"): Route("futures", 30, True, "futures_position_mode"),
    ("POST", "/fapi/v1/order"): Route("futures", 0, True, "futures_order_new", order=True),
    ("GET", "/fapi/v1/order"): Route("futures", 1, True, "futures_order_get"),
    ("DELETE", "/fapi/v1/order"): Route("futures", 1, True, "futures_order_cancel"),
    ("GET", "/fapi/v1/openOrders"): Route("futures", 1, True, "futures_open_orders"),
    ("GET", "/fapi/v1/userTrades"): Route("futures", 5, True, "futures_user_trades"),
    ("POST", "/fapi/v1/algoOrder"): Route("futures", 0, True, "algo_new", order=True),
    ("GET", "/fapi/v1/algoOrder"): Route("futures", 1, True, "algo_get"),
    ("DELETE", "/fapi/v1/algoOrder"): Route("futures", 1, True, "algo_cancel"),
    ("GET", "/fapi/v1/openAlgoOrders"): Route("futures", 1, True, "algo_open"),
    ("DELETE", "/fapi/v1/algoOpenOrders"): Route("futures", 1, True, "algo_cancel_all"),
    ("GET", "/fapi/v2/positionRisk"): Route("futures", 5, True, "position_risk"),
    ("GET", "/fapi/v3/positionRisk"): Route("futures", 5, True, "position_risk"),
    ("GET", "/fapi/v2/balance"): Route("futures", 5, True, "futures_balance"),
    ("GET", "/fapi/v3/balance"): Route("futures", 5, True, "futures_balance"),
    ("GET", "/fapi/v2/account"): Route("futures", 5, True, "futures_account"),
    ("GET", "/fapi/v3/account"): Route("futures", 5, True, "futures_account"),
}


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's delayed ACK
    # (~40 ms on Linux) on every keep-alive request, a stall the real Binance does not have.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - quiet test output
        return

    def _serve(self):
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.server.binance.handle(self, self.command, parts.path, parts.query, body)

    do_GET = do_POST = do_DELETE = do_PUT = _serve  # noqa: N815

    def reply(self, status: int, payload, headers: dict | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            ctype = "text/html" if isinstance(payload, str) else "application/json;charset=UTF-8"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, str(value))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout fault): nothing to tell it
            pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a bench's 80 worker threads connecting at once overflowed it,
    # and the dropped SYNs (retransmitted after 1, 3, 7 s…) made a few requests time out, which real Binance
    # does not do.
    request_queue_size = 128
    binance: BinanceServer


class BinanceServer:
    """Start with ``with BinanceServer() as server:``; ``server.url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self):
        self.lock = threading.RLock()
        self.closing = threading.Event()
        # Copies: a test that changes a rule (``server.specs[...].min_notional = ...``) changes it for itself only.
        self.specs = {"spot": {s.symbol: replace(s) for s in SPOT_SPECS},
                      "futures": {s.symbol: replace(s) for s in FUTURES_SPECS}}
        self.prices = {"spot": {"BTCUSDT": D("95234.50"), "ETHUSDT": D("3456.78"), "SOLUSDT": D("187.45")},
                       "futures": {"BTCUSDT": D("95234.50"), "ETHUSDT": D("3456.78"), "SOLUSDT": D("187.45")}}
        self.accounts: dict[str, Account] = {}
        self.log: list[Recorded] = []
        self.faults: list[Fault] = []
        self.weight_limit = {"spot": 6000, "futures": 2400}
        self.ban_after_429 = 2  # requests answered 429 in one window before the IP is banned
        self.ban_seconds = 120
        self.clock_offset_ms = 0  # server clock minus real clock
        self.commission = ZERO  # spot taker fee, taken from the received asset
        self.defer_market_fills = False  # futures MARKET answers NEW; filled when next looked up
        self._weight: dict[str, list[int]] = {}  # domain -> [minute, used, 429s served]
        self._banned_until: dict[str, float] = {}
        self._next_id = 4000001
        self.api_key, self.api_secret = self.add_account()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.binance = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    # -- lifecycle and test controls ---------------------------------------------------------------------
    def __enter__(self) -> BinanceServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def add_account(self, *, can_withdraw: bool = False, ip_restrict: bool = True, futures: bool = True,
                    spot_trading: bool = True, usdt: str = "10000", wallet: str = "10000") -> tuple[str, str]:
        key = secrets.token_hex(32)  # 64 alphanumerics, like Binance keys
        secret = secrets.token_hex(32)
        restrictions = {
            "ipRestrict": ip_restrict, "createTime": int(time.time() * 1000) - 86_400_000, "enableReading": True,
            "enableWithdrawals": can_withdraw, "enableInternalTransfer": False, "enableMargin": False,
            "enableFutures": futures, "permitsUniversalTransfer": False, "enableVanillaOptions": False,
            "enableFixApiTrade": False, "enableFixReadOnly": False, "enableSpotAndMarginTrading": spot_trading,
            "enablePortfolioMarginTrading": False,
        }
        if not ip_restrict:
            restrictions["tradingAuthorityExpirationTime"] = int(time.time() * 1000) + 29 * 86_400_000
        self.accounts[key] = Account(key, secret, restrictions, spot={"USDT": [D(usdt), ZERO]}, wallet=D(wallet))
        return key, secret

    def account(self, api_key: str | None = None) -> Account:
        return self.accounts[api_key or self.api_key]

    def set_price(self, symbol: str, price, market: str | None = None) -> None:
        with self.lock:
            for m in ([market] if market else ["spot", "futures"]):
                self.prices[m][symbol] = D(price)
                if m == "futures":
                    for account in self.accounts.values():
                        self._trigger_algo(account, symbol)

    def fault(self, kind: str, *, method: str | None = None, path: str | None = None, times: int = 1,
              delay: float = 0.0, status: int = 0, code: int = 0, msg: str = "", retry_after: int = 0,
              seconds: int = 0) -> None:
        """Inject a fault for the next ``times`` matching requests.

        kinds: ``latency`` (sleep ``delay``, then answer), ``timeout`` (process, then hold the answer ``delay``
        seconds: the client times out after the order exists), ``drop`` (process, close without answering),
        ``5xx_accepted`` (process, answer ``status``/503 with an HTML page), ``5xx`` (the same page, not processed:
        the client cannot tell the two apart),
        ``unknown_status`` (process, answer -1007 "execution status unknown"), ``error`` (answer
        ``status``/``code``/``msg``, not processed), ``429`` (rate limited, not processed), ``ban`` (418 and an IP
        ban of ``seconds``).
        """
        self.faults.append(Fault(kind, method, path, times, delay, status, code, msg, retry_after, seconds))

    def calls(self, path: str | None = None, method: str | None = None) -> list[Recorded]:
        return [r for r in self.log if (path is None or r.path == path) and (method is None or r.method == method)]

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    def _order_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- transport: limits, auth, faults -----------------------------------------------------------------
    def handle(self, req: _Handler, method: str, path: str, query: str, body: str) -> None:
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        record = Recorded(method, path, params, req.headers.get("X-MBX-APIKEY", ""))
        with self.lock:
            self.log.append(record)
        route = ROUTES.get((method, path))
        if route is None:
            record.status = 404
            return req.reply(404, "<html><body><h1>404 Not Found</h1></body></html>")
        fault = self._take_fault(method, path)
        if fault and fault.kind == "latency":
            self.closing.wait(fault.delay)
        if fault and fault.kind == "5xx":  # a gateway error before Binance's engine saw the request
            record.status = fault.status or 503
            return req.reply(record.status, "<html><body><h1>503 Service Unavailable</h1></body></html>")
        headers: dict = {}
        try:
            with self.lock:
                self._limits(route, fault, headers)
                if fault and fault.kind == "error":
                    raise ApiError(fault.status or 400, fault.code, fault.msg)
                account = self._authenticate(route, req, query, body, params)
                if route.order and account:
                    self._count_order(route.domain, account)
                payload = getattr(self, "h_" + route.handler)(account, params)
                if route.order and account:
                    headers.update(self._order_headers(route.domain, account))
            status = 200
        except ApiError as err:
            status, payload = err.status, {"code": err.code, "msg": err.msg}
            headers.update(err.headers)
            record.code = err.code
        record.status = status
        if fault and status == 200:
            if fault.kind == "timeout":
                self.closing.wait(fault.delay)
            elif fault.kind == "drop":
                req.close_connection = True
                return None
            elif fault.kind == "5xx_accepted":
                record.status = fault.status or 503
                return req.reply(record.status, "<html><body><h1>503 Service Unavailable</h1></body></html>")
            elif fault.kind == "unknown_status":
                record.status, record.code = fault.status or 408, -1007
                return req.reply(record.status, {"code": -1007, "msg": "Timeout waiting for response from backend "
                                                 "server. Send status unknown; execution status unknown."}, headers)
        return req.reply(status, payload, headers)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method in (None, method) and fault.path in (None, path):
                    fault.times -= 1
                    return fault
        return None

    def _limits(self, route: Route, fault: Fault | None, headers: dict) -> None:
        now = self.now_ms() / 1000
        domain = route.domain
        if fault and fault.kind == "ban":
            self._banned_until[domain] = now + (fault.seconds or self.ban_seconds)
        until = self._banned_until.get(domain, 0)
        if until > now:
            raise ApiError(418, -1003, f"Way too much request weight used; IP banned until {int(until * 1000)}. "
                           "Please use WebSocket Streams for live updates to avoid bans.",
                           {"Retry-After": int(until - now) + 1})
        minute = int(now // 60)
        window = self._weight.setdefault(domain, [minute, 0, 0])
        if window[0] != minute:
            window[:] = [minute, 0, 0]
        window[1] += route.weight
        headers["X-MBX-USED-WEIGHT-1M"] = window[1]
        if domain == "spot":
            headers["X-MBX-USED-WEIGHT"] = window[1]
        retry = int(60 - now % 60) + 1
        if fault and fault.kind == "429":
            raise ApiError(429, -1003, "Too many requests; please slow down.",
                           {"Retry-After": fault.retry_after or retry})
        if window[1] > self.weight_limit[domain]:
            window[2] += 1
            if window[2] > self.ban_after_429:
                self._banned_until[domain] = now + self.ban_seconds
                raise ApiError(418, -1003, f"Way too much request weight used; IP banned until "
                               f"{int((now + self.ban_seconds) * 1000)}. Please use WebSocket Streams for live "
                               "updates to avoid bans.", {"Retry-After": self.ban_seconds})
            raise ApiError(429, -1003, f"Too much request weight used; current limit is {self.weight_limit[domain]}"
                           " request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid "
                           "polling the API.", {"Retry-After": retry})

    def _authenticate(self, route: Route, req: _Handler, query: str, body: str, params: dict) -> Account | None:
        if not route.signed:
            return None
        key = req.headers.get("X-MBX-APIKEY", "")
        if not re.fullmatch(r"[A-Za-z0-9]{64}", key):
            raise ApiError(401, -2014, "API-key format invalid.")
        account = self.accounts.get(key)
        if account is None:
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        signed_query, sig_q = _strip_signature(query)
        signed_body, sig_b = _strip_signature(body)
        signature = sig_b or sig_q
        if not params.get("timestamp"):
            raise ApiError(400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        if not signature:
            raise ApiError(400, -1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        recv_window = int(params.get("recvWindow") or 5000)
        if recv_window > 60000:
            raise ApiError(400, -1131, "recvWindow must be less than 60000")
        server_time, timestamp = self.now_ms(), int(params["timestamp"])
        if timestamp >= server_time + 1000:
            raise ApiError(400, -1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if server_time - timestamp > recv_window:
            raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        expected = hmac.new(account.secret.encode(), (signed_query + signed_body).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise ApiError(400, -1022, "Signature for this request is not valid.")
        needs = {"spot_order_new": "enableSpotAndMarginTrading", "spot_oco_new": "enableSpotAndMarginTrading",
                 "futures_order_new": "enableFutures", "algo_new": "enableFutures"}.get(route.handler)
        if needs and not account.restrictions[needs]:
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        return account

    def _count_order(self, domain: str, account: Account) -> None:
        now = time.time()
        times = account.order_times[domain]
        times[:] = [t for t in times if now - t < ORDER_LIMITS[domain][1][0]] + [now]
        for seconds, limit in ORDER_LIMITS[domain]:
            if sum(1 for t in times if now - t < seconds) > limit:
                unit = "10 SECOND" if seconds == 10 else ("1 MINUTE" if seconds == 60 else "1 DAY")
                raise ApiError(429, -1015, f"Too many new orders; current limit is {limit} orders per {unit}.")

    def _order_headers(self, domain: str, account: Account) -> dict:
        now = time.time()
        times = account.order_times[domain]
        (short, _), (long_, _) = ORDER_LIMITS[domain]
        names = COUNT_HEADERS[domain]
        return {names[0]: sum(1 for t in times if now - t < short), names[1]: sum(1 for t in times if now - t < long_)}

    # -- shared checks ---------------------------------------------------------------------------------------
    def _spec(self, market: str, params: dict) -> Spec:
        symbol = params.get("symbol")
        if not symbol:
            raise ApiError(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        spec = self.specs[market].get(symbol)
        if spec is None:
            raise ApiError(400, -1121, "Invalid symbol.")
        return spec

    @staticmethod
    def _decimal(params: dict, name: str, required: bool = True) -> Decimal | None:
        raw = params.get(name)
        if raw in (None, ""):
            if required:
                raise ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
            return None
        try:
            return D(raw)
        except ArithmeticError:
            raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is "
                           "'^([0-9]{1,20})(\\.[0-9]{1,20})?$'.") from None

    @staticmethod
    def _client_id(params: dict, name: str) -> str | None:
        value = params.get(name)
        if value is not None and not CLIENT_ID.match(value):
            raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is "
                           "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        return value

    def _check_qty(self, market: str, spec: Spec, qty: Decimal, is_market: bool) -> None:
        step, min_qty, max_qty = D(spec.step), D(spec.min_qty), D(spec.max_qty)
        checks = [("LOT_SIZE", step, min_qty, max_qty)]
        if is_market:
            m_step = D(spec.market_step if spec.market_step is not None else spec.step)
            m_min = D(spec.market_min if spec.market_min is not None else spec.min_qty)
            checks.append(("MARKET_LOT_SIZE", m_step, m_min, D(spec.market_max)))
        for name, c_step, c_min, c_max in checks:
            if qty <= 0:
                raise ApiError(400, -4003 if market == "futures" else -1013,
                               "Quantity less than or equal to zero." if market == "futures" else
                               f"Filter failure: {name}")
            if market == "spot":
                if qty < c_min or qty > c_max or not _multiple(qty, c_step, c_min):
                    raise ApiError(400, -1013, f"Filter failure: {name}")
            else:
                if not _multiple(qty, c_step):
                    raise ApiError(400, -1111, "Precision is over the maximum defined for this asset.")
                if qty < c_min:
                    raise ApiError(400, -4004, "Quantity less than min quantity.")
                if qty > c_max:
                    raise ApiError(400, -4005, "Quantity greater than max quantity.")

    @staticmethod
    def _check_price(market: str, spec: Spec, price: Decimal) -> None:
        if price <= 0 or not _multiple(price, D(spec.tick)):
            if market == "spot":
                raise ApiError(400, -1013, "Filter failure: PRICE_FILTER")
            raise ApiError(400, -4014, "Price not increased by tick size.")

    def _check_notional(self, market: str, spec: Spec, qty: Decimal, price: Decimal) -> None:
        if qty * price < D(spec.min_notional):
            if market == "spot":
                raise ApiError(400, -1013, "Filter failure: NOTIONAL")
            raise ApiError(400, -4164, f"Order's notional must be no smaller than {spec.min_notional} "
                           "(unless you choose reduce only).")

    # -- public endpoints ----------------------------------------------------------------------------------
    def h_ping(self, account, params):
        return {}

    def h_time(self, account, params):
        return {"serverTime": self.now_ms()}

    def h_spot_exchange_info(self, account, params):
        return {"timezone": "UTC", "serverTime": self.now_ms(),
                "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                "limit": self.weight_limit["spot"]}],
                "exchangeFilters": [], "symbols": [spot_symbol_info(s) for s in self.specs["spot"].values()]}

    def h_futures_exchange_info(self, account, params):
        return {"timezone": "UTC", "serverTime": self.now_ms(), "futuresType": "U_MARGINED",
                "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                "limit": self.weight_limit["futures"]},
                               {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                               {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300}],
                "exchangeFilters": [], "assets": [{"asset": "USDT", "marginAvailable": True}],
                "symbols": [futures_symbol_info(s) for s in self.specs["futures"].values()]}

    def h_spot_ticker(self, account, params):
        if params.get("symbol"):
            spec = self._spec("spot", params)
            return {"symbol": spec.symbol, "price": fmt(self.prices["spot"][spec.symbol])}
        wanted = json.loads(params["symbols"]) if params.get("symbols") else list(self.prices["spot"])
        if any(s not in self.specs["spot"] for s in wanted):
            raise ApiError(400, -1121, "Invalid symbol.")
        return [{"symbol": s, "price": fmt(self.prices["spot"][s])} for s in wanted]

    def h_futures_ticker(self, account, params):
        now = self.now_ms()
        if params.get("symbol"):
            spec = self._spec("futures", params)
            return {"symbol": spec.symbol, "price": plain(self.prices["futures"][spec.symbol]), "time": now}
        return [{"symbol": s, "price": plain(p), "time": now} for s, p in self.prices["futures"].items()]

    def h_api_restrictions(self, account, params):
        return dict(account.restrictions)

    # -- spot --------------------------------------------------------------------------------------------------
    def h_spot_account(self, account, params):
        balances = [{"asset": a, "free": fmt(f), "locked": fmt(lk)} for a, (f, lk) in account.spot.items()]
        return {"makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
                "canTrade": account.restrictions["enableSpotAndMarginTrading"],
                "canWithdraw": account.restrictions["enableWithdrawals"], "canDeposit": True, "brokered": False,
                "requireSelfTradePrevention": False, "preventSor": False, "updateTime": self.now_ms(),
                "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"], "uid": 354937868}

    def _balance(self, account: Account, asset: str) -> list[Decimal]:
        return account.spot.setdefault(asset, [ZERO, ZERO])

    def _spot_open(self, account: Account, symbol: str | None = None) -> list[dict]:
        return [o for o in account.orders["spot"]
                if o["status"] in ("NEW", "PARTIALLY_FILLED") and symbol in (None, o["symbol"])]

    def _spot_check_new_id(self, account: Account, client_id: str) -> None:
        if any(o["clientOrderId"] == client_id for o in self._spot_open(account)):
            raise ApiError(400, -2010, "Duplicate order sent.")

    def h_spot_order_new(self, account, params):
        spec = self._spec("spot", params)
        side, otype = params.get("side"), params.get("type")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
        if otype not in ("MARKET", "LIMIT", "STOP_LOSS", "TAKE_PROFIT"):
            raise ApiError(400, -1116, "Invalid orderType.")
        client_id = self._client_id(params, "newClientOrderId") or f"web_{secrets.token_hex(8)}"
        self._spot_check_new_id(account, client_id)
        qty = self._decimal(params, "quantity")
        market = self.prices["spot"][spec.symbol]
        price = stop = None
        if otype == "LIMIT":
            if not params.get("timeInForce"):
                raise ApiError(400, -1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or "
                               "malformed.")
            price = self._decimal(params, "price")
            self._check_price("spot", spec, price)
        if otype in ("STOP_LOSS", "TAKE_PROFIT"):
            stop = self._decimal(params, "stopPrice")
            self._check_price("spot", spec, stop)
            wrong = (stop >= market) if (otype == "STOP_LOSS") == (side == "SELL") else (stop <= market)
            if wrong:
                raise ApiError(400, -2010, "Stop price would trigger immediately.")
        self._check_qty("spot", spec, qty, otype == "MARKET")
        self._check_notional("spot", spec, qty, price or stop or market)
        order = self._spot_new_order(spec, client_id, side, otype, qty, price, stop)
        self._spot_reserve(account, spec, order, price or market)
        marketable = otype == "MARKET" or (otype == "LIMIT" and (price >= market if side == "BUY" else price <= market))
        fills = self._spot_fill(account, spec, order, market) if marketable else []
        account.orders["spot"].append(order)
        resp_type = params.get("newOrderRespType") or ("FULL" if otype in ("MARKET", "LIMIT") else "ACK")
        return self._spot_response(order, resp_type, fills)

    def _spot_new_order(self, spec, client_id, side, otype, qty, price=None, stop=None, list_id=-1) -> dict:
        now = self.now_ms()
        return {"symbol": spec.symbol, "orderId": self._order_id(), "orderListId": list_id,
                "clientOrderId": client_id, "price": fmt(price), "origQty": fmt(qty), "executedQty": fmt(ZERO),
                "cummulativeQuoteQty": fmt(ZERO), "status": "NEW", "timeInForce": "GTC", "type": otype, "side": side,
                "stopPrice": fmt(stop), "icebergQty": fmt(ZERO), "time": now, "updateTime": now, "isWorking": True,
                "workingTime": now, "origQuoteOrderQty": fmt(ZERO), "selfTradePreventionMode": "EXPIRE_MAKER"}

    def _spot_reserve(self, account: Account, spec: Spec, order: dict, price: Decimal) -> None:
        """Move what the order may spend from free to locked; the order remembers it in ``_lock``."""
        qty = D(order["origQty"])
        asset, amount = (spec.quote, qty * price) if order["side"] == "BUY" else (spec.base, qty)
        balance = self._balance(account, asset)
        if balance[0] < amount:
            raise ApiError(400, -2010, "Account has insufficient balance for requested action.")
        balance[0] -= amount
        balance[1] += amount
        order["_lock"] = [asset, amount]

    def _release(self, account: Account, order: dict) -> None:
        lock = order.pop("_lock", None)
        if lock:
            balance = self._balance(account, lock[0])
            balance[0] += lock[1]
            balance[1] -= lock[1]

    def _spot_fill(self, account: Account, spec: Spec, order: dict, price: Decimal) -> list[dict]:
        qty, side = D(order["origQty"]), order["side"]
        quote = qty * price
        self._release(account, order)
        pay, get = (spec.quote, spec.base) if side == "BUY" else (spec.base, spec.quote)
        spent, received = (quote, qty) if side == "BUY" else (qty, quote)
        fee = (received * self.commission).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        self._balance(account, pay)[0] -= spent
        self._balance(account, get)[0] += received - fee
        order.update(executedQty=fmt(qty), cummulativeQuoteQty=fmt(quote), status="FILLED",
                     updateTime=self.now_ms())
        return [{"price": fmt(price), "qty": fmt(qty), "commission": fmt(fee), "commissionAsset": get,
                 "tradeId": self._order_id()}]

    @staticmethod
    def _spot_response(order: dict, resp_type: str, fills: list) -> dict:
        if resp_type == "ACK":
            return {k: order[k] for k in ("symbol", "orderId", "orderListId", "clientOrderId")} | {
                "transactTime": order["time"]}
        keys = ("symbol", "orderId", "orderListId", "clientOrderId", "price", "origQty", "executedQty",
                "origQuoteOrderQty", "cummulativeQuoteQty", "status", "timeInForce", "type", "side", "workingTime",
                "selfTradePreventionMode")
        out = {k: order[k] for k in keys} | {"transactTime": order["time"]}
        if order["type"] in ("STOP_LOSS", "TAKE_PROFIT"):
            out["stopPrice"] = order["stopPrice"]
        if resp_type == "FULL":
            out["fills"] = fills
        return out

    def _spot_find(self, account: Account, params: dict) -> dict:
        spec = self._spec("spot", params)
        cid, oid = params.get("origClientOrderId"), params.get("orderId")
        if not cid and not oid:
            raise ApiError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        for order in reversed(account.orders["spot"]):
            if order["symbol"] == spec.symbol and (order["clientOrderId"] == cid or str(order["orderId"]) == oid):
                return order
        raise ApiError(400, -2013, "Order does not exist.")

    def h_spot_order_get(self, account, params):
        return _public(self._spot_find(account, params))

    def _spot_cancel(self, account: Account, order: dict) -> dict:
        self._release(account, order)
        order.update(status="CANCELED", updateTime=self.now_ms())
        list_id = order["orderListId"]
        if list_id != -1 and not any(o["orderListId"] == list_id for o in self._spot_open(account)):
            for order_list in account.order_lists:
                if order_list["orderListId"] == list_id:
                    order_list.update(listStatusType="ALL_DONE", listOrderStatus="ALL_DONE")
        return _public(order)

    def h_spot_order_cancel(self, account, params):
        order = self._spot_find(account, params)
        if order["status"] not in ("NEW", "PARTIALLY_FILLED"):
            raise ApiError(400, -2011, "Unknown order sent.")
        if order["orderListId"] != -1:
            return [self._spot_cancel(account, o) for o in self._spot_open(account, order["symbol"])
                    if o["orderListId"] == order["orderListId"]][-1]
        return self._spot_cancel(account, order)

    def h_spot_open_orders(self, account, params):
        return [_public(o) for o in self._spot_open(account, params.get("symbol"))]

    def h_spot_cancel_all(self, account, params):
        spec = self._spec("spot", params)
        open_orders = self._spot_open(account, spec.symbol)
        if not open_orders:
            raise ApiError(400, -2011, "Unknown order sent.")
        return [self._spot_cancel(account, o) for o in open_orders]

    def h_spot_oco_new(self, account, params):
        spec = self._spec("spot", params)
        side = params.get("side")
        qty = self._decimal(params, "quantity")
        above, below = params.get("aboveType"), params.get("belowType")
        market = self.prices["spot"][spec.symbol]
        if side != "SELL" or above != "LIMIT_MAKER" or below != "STOP_LOSS":
            raise ApiError(400, -1128, "Combination of optional parameters invalid.")
        take, stop = self._decimal(params, "abovePrice"), self._decimal(params, "belowStopPrice")
        for price in (take, stop):
            self._check_price("spot", spec, price)
        if not take > market > stop:
            raise ApiError(400, -2010, "The relationship of the prices for the orders is not correct.")
        self._check_qty("spot", spec, qty, False)
        self._check_notional("spot", spec, qty, stop)
        ids = [self._client_id(params, n) or f"x-{secrets.token_hex(6)}"
               for n in ("listClientOrderId", "aboveClientOrderId", "belowClientOrderId")]
        for cid in ids[1:]:
            self._spot_check_new_id(account, cid)
        if any(lst["listClientOrderId"] == ids[0] and lst["listOrderStatus"] == "EXECUTING"
               for lst in account.order_lists):
            raise ApiError(400, -2010, "Duplicate order sent.")
        list_id = self._order_id()
        legs = [self._spot_new_order(spec, ids[2], side, "STOP_LOSS", qty, stop=stop, list_id=list_id),
                self._spot_new_order(spec, ids[1], side, "LIMIT_MAKER", qty, price=take, list_id=list_id)]
        self._spot_reserve(account, spec, legs[0], market)  # both legs sell the same coins: one lock
        account.orders["spot"].extend(legs)
        order_list = {"orderListId": list_id, "contingencyType": "OCO", "listStatusType": "EXEC_STARTED",
                      "listOrderStatus": "EXECUTING", "listClientOrderId": ids[0], "transactionTime": self.now_ms(),
                      "symbol": spec.symbol,
                      "orders": [{"symbol": spec.symbol, "orderId": o["orderId"], "clientOrderId": o["clientOrderId"]}
                                 for o in legs]}
        account.order_lists.append(order_list)
        return order_list | {"orderReports": [self._spot_response(o, "RESULT", []) for o in legs]}

    # -- futures -------------------------------------------------------------------------------------------
    def h_futures_leverage(self, account, params):
        spec = self._spec("futures", params)
        leverage = int(self._decimal(params, "leverage"))
        if not 1 <= leverage <= 125:
            raise ApiError(400, -4028, f"Leverage {leverage} is not valid")
        account.leverage[spec.symbol] = leverage
        return {"leverage": leverage, "maxNotionalValue": "1000000", "symbol": spec.symbol}

    def h_futures_margin_type(self, account, params):
        spec = self._spec("futures", params)
        wanted = params.get("marginType")
        if wanted not in ("ISOLATED", "CROSSED"):
            raise ApiError(400, -1102, "Mandatory parameter 'marginType' was not sent, was empty/null, or malformed.")
        if account.margin_type.get(spec.symbol, "CROSSED") == wanted:
            raise ApiError(400, -4046, "No need to change margin type.")
        if account.positions.get(spec.symbol, [ZERO])[0] != 0:
            raise ApiError(400, -4048, "Margin type cannot be changed if there exists position.")
        account.margin_type[spec.symbol] = wanted
        return {"code": 200, "msg": "success"}

    def h_futures_position_mode(self, account, params):
        return {"dualSidePosition": account.dual_side}

    def _used_margin(self, account: Account) -> Decimal:
        return sum((abs(a) * e / account.leverage.get(s, 20) for s, (a, e) in account.positions.items()), ZERO)

    def h_futures_order_new(self, account, params):
        spec = self._spec("futures", params)
        otype, side = params.get("type"), params.get("side")
        if otype in CONDITIONAL:
            raise ApiError(400, -4120, "Order type not supported for this endpoint. Please use the Algo Order API "
                           "endpoints instead.")
        if otype not in ("MARKET", "LIMIT"):
            raise ApiError(400, -1116, "Invalid orderType.")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        if params.get("closePosition"):
            raise ApiError(400, -1106, "Parameter 'closePosition' sent when not required.")
        if account.dual_side and params.get("positionSide", "BOTH") == "BOTH":
            raise ApiError(400, -4061, "Order's position side does not match user's setting.")
        client_id = self._client_id(params, "newClientOrderId") or f"web_{secrets.token_hex(8)}"
        if any(o["clientOrderId"] == client_id and o["status"] in ("NEW", "PARTIALLY_FILLED")
               for o in account.orders["futures"]):
            raise ApiError(400, -4116, "ClientOrderId is duplicated.")
        qty = self._decimal(params, "quantity")
        market = self.prices["futures"][spec.symbol]
        price = None
        if otype == "LIMIT":
            if not params.get("timeInForce"):
                raise ApiError(400, -1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or "
                               "malformed.")
            price = self._decimal(params, "price")
            self._check_price("futures", spec, price)
        self._check_qty("futures", spec, qty, otype == "MARKET")
        reduce_only = params.get("reduceOnly", "false").lower() == "true"
        signed = qty if side == "BUY" else -qty
        amt = account.positions.get(spec.symbol, [ZERO, ZERO])[0]
        if reduce_only and (amt == 0 or (amt > 0) == (signed > 0) or qty > abs(amt)):
            raise ApiError(400, -2022, "ReduceOnly Order is rejected.")
        if not reduce_only:
            self._check_notional("futures", spec, qty, price or market)
            increases = amt == 0 or (amt > 0) == (signed > 0)
            need = qty * (price or market) / account.leverage.get(spec.symbol, 20)
            if increases and need > account.wallet - self._used_margin(account):
                raise ApiError(400, -2019, "Margin is insufficient.")
        now = self.now_ms()
        order = {"orderId": self._order_id(), "symbol": spec.symbol, "status": "NEW", "clientOrderId": client_id,
                 "price": plain(price or ZERO), "avgPrice": "0.00", "origQty": plain(qty), "executedQty": "0",
                 "cumQty": "0", "cumQuote": "0", "timeInForce": params.get("timeInForce", "GTC"), "type": otype,
                 "reduceOnly": reduce_only, "closePosition": False, "side": side, "positionSide": "BOTH",
                 "stopPrice": "0", "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": otype,
                 "priceMatch": "NONE", "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0, "time": now,
                 "updateTime": now}
        account.orders["futures"].append(order)
        if otype == "MARKET" and self.defer_market_fills:
            order["_fill_at"] = market  # the matching engine is slow: filled by the time anyone asks
        elif otype == "MARKET" or (price >= market if side == "BUY" else price <= market):
            self._futures_fill(account, order, market)
        if params.get("newOrderRespType", "ACK") == "ACK":
            return _public(order) | {"status": "NEW", "executedQty": "0", "cumQty": "0", "cumQuote": "0",
                                     "avgPrice": "0.00"}
        return _public(order)

    def _futures_fill(self, account: Account, order: dict, price: Decimal) -> None:
        qty = D(order["origQty"])
        signed = qty if order["side"] == "BUY" else -qty
        amt, entry = account.positions.get(order["symbol"], [ZERO, ZERO])
        realized = ZERO
        if amt == 0 or (amt > 0) == (signed > 0):
            new_amt = amt + signed
            entry = (abs(amt) * entry + qty * price) / abs(new_amt)
        else:
            closing = min(abs(amt), qty)
            realized = closing * (price - entry) * (1 if amt > 0 else -1)
            account.wallet += realized
            new_amt = amt + signed
            if new_amt != 0 and (new_amt > 0) != (amt > 0):
                entry = price
        if new_amt == 0:
            account.positions.pop(order["symbol"], None)
        else:
            account.positions[order["symbol"]] = [new_amt, entry]
        order.update(status="FILLED", avgPrice=plain(price), executedQty=plain(qty), cumQty=plain(qty),
                     cumQuote=plain(qty * price), updateTime=self.now_ms())
        account.trades.append({"symbol": order["symbol"], "id": self._order_id(), "orderId": order["orderId"],
                               "side": order["side"], "price": plain(price), "qty": plain(qty),
                               "realizedPnl": plain(realized), "quoteQty": plain(qty * price), "commission": "0",
                               "commissionAsset": "USDT", "time": order["updateTime"], "positionSide": "BOTH",
                               "buyer": order["side"] == "BUY", "maker": False})

    def _futures_find(self, account: Account, params: dict) -> dict:
        spec = self._spec("futures", params)
        cid, oid = params.get("origClientOrderId"), params.get("orderId")
        if not cid and not oid:
            raise ApiError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        for order in reversed(account.orders["futures"]):
            if order["symbol"] == spec.symbol and (order["clientOrderId"] == cid or str(order["orderId"]) == oid):
                if "_fill_at" in order:
                    self._futures_fill(account, order, order.pop("_fill_at"))
                return order
        raise ApiError(400, -2013, "Order does not exist.")

    def h_futures_order_get(self, account, params):
        return _public(self._futures_find(account, params))

    def h_futures_order_cancel(self, account, params):
        order = self._futures_find(account, params)
        if order["status"] not in ("NEW", "PARTIALLY_FILLED"):
            raise ApiError(400, -2011, "Unknown order sent.")
        order.update(status="CANCELED", updateTime=self.now_ms())
        return _public(order)

    def h_futures_open_orders(self, account, params):
        return [_public(o) for o in account.orders["futures"] if o["status"] == "NEW"
                and params.get("symbol") in (None, o["symbol"])]

    def h_futures_user_trades(self, account, params):
        """Account trade list: ``symbol`` required; ``startTime``/``endTime`` at most 7 days apart (-4166; with one
        of them the other is 7 days away, with neither the last 7 days), ``fromId`` (not with times), ``limit``
        500 by default, at most 1,000; oldest first."""
        spec = self._spec("futures", params)
        week = 7 * 86_400_000
        start, end = params.get("startTime"), params.get("endTime")
        limit = int(params.get("limit") or 500)
        if not 1 <= limit <= 1000:
            raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        if params.get("fromId") and (start or end):
            raise ApiError(400, -4166, "fromId is not allowed together with startTime or endTime.")
        if start and end and int(end) - int(start) > week:
            raise ApiError(400, -4166, "The time between startTime and endTime cannot be longer than 7 days.")
        if start or end:
            start = int(start) if start else int(end) - week
            end = int(end) if end else start + week
        elif not params.get("fromId"):
            end = self.now_ms()
            start = end - week
        rows = [t for t in account.trades if t["symbol"] == spec.symbol
                and (start is None or start <= t["time"] <= end)
                and int(params.get("fromId") or 0) <= t["id"]]
        return [dict(t) for t in rows[:limit]]

    def h_algo_new(self, account, params):
        spec = self._spec("futures", params)
        if params.get("algoType") != "CONDITIONAL":
            raise ApiError(400, -1102, "Mandatory parameter 'algoType' was not sent, was empty/null, or malformed.")
        otype, side = params.get("type"), params.get("side")
        if otype not in ("STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT"):
            raise ApiError(400, -1116, "Invalid orderType.")
        client_id = self._client_id(params, "clientAlgoId") or secrets.token_hex(11)
        if any(a["clientAlgoId"] == client_id and a["algoStatus"] == "NEW" for a in account.algo):
            raise ApiError(400, -4116, "ClientOrderId is duplicated.")
        trigger = self._decimal(params, "triggerPrice")
        self._check_price("futures", spec, trigger)
        close_position = params.get("closePosition", "false").lower() == "true"
        reduce_only = params.get("reduceOnly", "false").lower() == "true"
        qty = self._decimal(params, "quantity", required=not close_position)
        if close_position:
            if otype not in ("STOP_MARKET", "TAKE_PROFIT_MARKET"):
                raise ApiError(400, -1106, "Parameter 'closePosition' sent when not required.")
            if qty is not None:
                raise ApiError(400, -4137, "Quantity must be zero with closePosition equals true")
            if "reduceOnly" in params:
                raise ApiError(400, -1106, "Parameter 'reduceOnly' sent when not required.")
        else:
            self._check_qty("futures", spec, qty, otype.endswith("MARKET"))
            if not reduce_only:
                self._check_notional("futures", spec, qty, trigger)
        last = self.prices["futures"][spec.symbol]
        is_stop = otype.startswith("STOP")
        fires_now = (trigger >= last if side == "SELL" else trigger <= last) if is_stop else (
            trigger <= last if side == "SELL" else trigger >= last)
        if fires_now:
            raise ApiError(400, -2021, "Order would immediately trigger.")
        now = self.now_ms()
        algo = {"algoId": self._order_id(), "clientAlgoId": client_id, "algoType": "CONDITIONAL",
                "orderType": otype, "symbol": spec.symbol, "side": side, "positionSide": "BOTH",
                "timeInForce": params.get("timeInForce", "GTC"), "quantity": plain(qty) if qty else "0",
                "algoStatus": "NEW", "triggerPrice": plain(trigger), "price": params.get("price", "0"),
                "icebergQuantity": None, "selfTradePreventionMode": "EXPIRE_MAKER",
                "workingType": params.get("workingType", "CONTRACT_PRICE"), "priceMatch": "NONE",
                "closePosition": close_position, "priceProtect": params.get("priceProtect", "FALSE") == "TRUE",
                "reduceOnly": reduce_only, "activatePrice": "", "callbackRate": "", "createTime": now,
                "updateTime": now, "triggerTime": 0, "goodTillDate": 0}
        account.algo.append(algo)
        return dict(algo)

    def _algo_find(self, account: Account, params: dict) -> dict:
        aid, cid = params.get("algoId"), params.get("clientAlgoId")
        if not aid and not cid:
            raise ApiError(400, -1102, "Param 'algoId' or 'clientAlgoId' must be sent, but both were empty/null!")
        for algo in reversed(account.algo):
            if str(algo["algoId"]) == aid or algo["clientAlgoId"] == cid:
                return algo
        raise ApiError(400, -2013, "Order does not exist.")

    def h_algo_get(self, account, params):
        return dict(self._algo_find(account, params))

    def h_algo_cancel(self, account, params):
        algo = self._algo_find(account, params)
        if algo["algoStatus"] != "NEW":
            raise ApiError(400, -2011, "Unknown order sent.")
        algo.update(algoStatus="CANCELED", updateTime=self.now_ms())
        return {"algoId": algo["algoId"], "clientAlgoId": algo["clientAlgoId"], "code": "200", "msg": "success"}

    def h_algo_open(self, account, params):
        return [dict(a) for a in account.algo if a["algoStatus"] == "NEW"
                and params.get("symbol") in (None, a["symbol"])]

    def h_algo_cancel_all(self, account, params):
        spec = self._spec("futures", params)
        for algo in account.algo:
            if algo["symbol"] == spec.symbol and algo["algoStatus"] == "NEW":
                algo.update(algoStatus="CANCELED", updateTime=self.now_ms())
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    def _trigger_algo(self, account: Account, symbol: str) -> None:
        last = self.prices["futures"][symbol]
        for algo in account.algo:
            if algo["symbol"] != symbol or algo["algoStatus"] != "NEW" or not algo["orderType"].endswith("MARKET"):
                continue
            trigger, side = D(algo["triggerPrice"]), algo["side"]
            is_stop = algo["orderType"] == "STOP_MARKET"
            hit = (last <= trigger if side == "SELL" else last >= trigger) if is_stop else (
                last >= trigger if side == "SELL" else last <= trigger)
            if not hit:
                continue
            amt = account.positions.get(symbol, [ZERO])[0]
            closing = amt != 0 and (amt > 0) == (side == "SELL")
            qty = abs(amt) if algo["closePosition"] else min(D(algo["quantity"]), abs(amt))
            algo.update(triggerTime=self.now_ms(), updateTime=self.now_ms())
            if not closing or qty == 0:
                algo["algoStatus"] = "EXPIRED"
                continue
            order = {"orderId": self._order_id(), "symbol": symbol, "status": "NEW",
                     "clientOrderId": f"autoclose-{algo['algoId']}", "origQty": plain(qty), "side": side,
                     "type": "MARKET", "reduceOnly": True, "time": self.now_ms()}
            account.orders["futures"].append(order)
            self._futures_fill(account, order, last)
            algo.update(algoStatus="FINISHED", actualOrderId=str(order["orderId"]), executedQty=plain(qty),
                        avgPrice=plain(last))

    def h_position_risk(self, account, params):
        out = []
        for symbol, (amt, entry) in account.positions.items():
            if params.get("symbol") not in (None, symbol):
                continue
            mark = self.prices["futures"][symbol]
            margin = abs(amt) * mark / account.leverage.get(symbol, 20)
            out.append({"symbol": symbol, "positionSide": "BOTH", "positionAmt": plain(amt),
                        "entryPrice": plain(entry), "breakEvenPrice": plain(entry), "markPrice": plain(mark),
                        "unRealizedProfit": plain((mark - entry) * amt), "liquidationPrice": "0",
                        "isolatedMargin": "0", "notional": plain(amt * mark), "marginAsset": "USDT",
                        "isolatedWallet": "0", "initialMargin": plain(margin), "maintMargin": plain(margin / 10),
                        "positionInitialMargin": plain(margin), "openOrderInitialMargin": "0", "adl": 1,
                        "bidNotional": "0", "askNotional": "0", "updateTime": self.now_ms()})
        return out

    def _unrealized(self, account: Account) -> Decimal:
        return sum(((self.prices["futures"][s] - e) * a for s, (a, e) in account.positions.items()), ZERO)

    def h_futures_balance(self, account, params):
        pnl = self._unrealized(account)
        available = account.wallet + pnl - self._used_margin(account)
        return [{"accountAlias": "SgsR", "asset": "USDT", "balance": plain(account.wallet),
                 "crossWalletBalance": plain(account.wallet), "crossUnPnl": plain(pnl),
                 "availableBalance": plain(available), "maxWithdrawAmount": plain(available),
                 "marginAvailable": True, "updateTime": self.now_ms()}]

    def h_futures_account(self, account, params):
        pnl = self._unrealized(account)
        available = account.wallet + pnl - self._used_margin(account)
        return {"totalInitialMargin": plain(self._used_margin(account)), "totalWalletBalance": plain(account.wallet),
                "totalUnrealizedProfit": plain(pnl), "totalMarginBalance": plain(account.wallet + pnl),
                "availableBalance": plain(available), "maxWithdrawAmount": plain(available),
                "canTrade": account.restrictions["enableFutures"], "assets": self.h_futures_balance(account, params),
                "positions": self.h_position_risk(account, params)}


def _public(order: dict) -> dict:
    return {k: v for k, v in order.items() if not k.startswith("_")}


def _strip_signature(raw: str) -> tuple[str, str | None]:
    """``raw`` without its ``signature=`` parameter (Binance signs everything else, byte for byte)."""
    if not raw:
        return "", None
    kept, signature = [], None
    for part in raw.split("&"):
        if part.startswith("signature="):
            signature = part[len("signature="):]
        else:
            kept.append(part)
    return "&".join(kept), signature


def point_settings_at(settings, server: BinanceServer) -> None:
    """Aim every Binance URL setting (live and testnet) at ``server`` for one test."""
    for name, suffix in (("BINANCE_API_URL", "/api"), ("BINANCE_SAPI_URL", "/sapi"),
                         ("BINANCE_FUTURES_URL", "/fapi"), ("BINANCE_TESTNET_API_URL", "/api"),
                         ("BINANCE_TESTNET_FUTURES_URL", "/fapi")):
        setattr(settings, name, server.url + suffix)
    settings.BINANCE_TIMEOUT = 2
