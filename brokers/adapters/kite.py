"""Zerodha Kite Connect, through the official ``kiteconnect`` SDK.

Symbols: ``EXCHANGE:TRADINGSYMBOL`` (``NFO:NIFTY2610625000PE``) or a bare tradingsymbol, whose exchange
is then ``request.extra["exchange"]``, else the Instrument table (NFO before NSE), else the account's
``options["exchange"]``, else NFO. ``positions()`` reports NFO/NSE symbols bare and others prefixed.

Orders: product from ``extra["product"]`` / ``options["product"]`` (default NRML on derivatives
exchanges, CNC on NSE/BSE), variety ``regular`` unless configured, ``tag`` = the client order id (our
ids are ≤ 20 alphanumerics; anything else is hashed deterministically), MARKET and SL-M orders carry
``market_protection`` (-1 = Kite's automatic band unless configured). A quantity above the contract's
freeze limit is sent as several orders sharing the tag (at most 10); ``order_status`` adds them up.
Every order first takes a slot from the shared per-account limiter (``brokers.ratelimit``), so a
fan-out stays under Kite's 10 orders/s and 400/min; a 429 anyway is retried briefly with backoff.

Kite answers a placement with an order id only; the adapter then reads the order book for a short
while (``KITE_FILL_WAIT`` seconds) to report the fill, else reports the order ``open``.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from dataclasses import replace
from decimal import Decimal
from functools import cached_property
from urllib.parse import urlencode

import requests
from django.conf import settings
from django.utils import timezone
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kex

from brokers import ratelimit
from brokers.adapters.base import (
    Balance,
    BrokerAdapter,
    BrokerAmbiguous,
    BrokerAuthError,
    BrokerError,
    BrokerFill,
    BrokerPosition,
    BrokerRejected,
    BrokerTransient,
    OrderRequest,
    OrderResult,
)
from brokers.models import Broker, BrokerAccount, Instrument

DEFAULT_ROOT = "https://api.kite.trade"
EXCHANGES = ("NFO", "NSE", "BFO", "BSE", "MCX", "CDS")  # preference order for bare symbols
DERIVATIVE_EXCHANGES = {"NFO", "BFO", "MCX", "CDS", "BCD"}
BARE_EXCHANGES = {"NFO", "NSE"}
TERMINAL = ("COMPLETE", "REJECTED", "CANCELLED")
TAG_RE = re.compile(r"^[A-Za-z0-9]{1,20}$")
ORDER_TYPES = {"market": "MARKET", "limit": "LIMIT", "take_profit": "LIMIT"}


def _setting(name: str, default):
    return getattr(settings, name, default)


def kite_root() -> str:
    return _setting("KITE_API_ROOT", DEFAULT_ROOT)


def kite_tag(client_order_id: str) -> str:
    """Kite's only correlation field: ≤ 20 alphanumerics. Other ids map to a stable 20-character hash."""
    if TAG_RE.fullmatch(client_order_id):
        return client_order_id
    return "H" + hashlib.sha256(client_order_id.encode()).hexdigest()[:19]


def _dec(value) -> Decimal:
    return Decimal(str(value or 0))


def _proxies(proxy) -> dict | None:
    if not proxy:
        return None
    return dict(proxy) if isinstance(proxy, dict) else {"http": proxy, "https": proxy}


def build_client(account: BrokerAccount, *, access_token: str | None = None) -> KiteConnect:
    options = account.options or {}
    token = account.access_token if access_token is None else access_token
    return KiteConnect(
        api_key=account.api_key, access_token=token or None,
        root=kite_root(), timeout=float(options.get("timeout") or _setting("KITE_TIMEOUT", 7)),
        proxies=_proxies(options.get("proxy")),
    )


def translate(exc: Exception, *, placing: bool) -> BrokerError:
    """Kite's error (or a transport failure) as the engine's error class.

    While placing an order, anything that leaves us not knowing whether Kite took it (timeout, dropped
    connection, 5xx, unreadable answer) is ``BrokerAmbiguous``; on reads the same is ``BrokerTransient``.
    """
    unsure = BrokerAmbiguous if placing else BrokerTransient
    message = str(exc) or exc.__class__.__name__
    if isinstance(exc, kex.TokenException):
        return BrokerAuthError(f"{message} Kite sessions end every morning: log in to Kite again to resume trading.",
                               code="kite_token")
    if isinstance(exc, kex.KiteException) and exc.code == 429:
        return BrokerTransient(f"Kite rate limit: {message}", code="kite_rate_limited",
                               retry_after=float(_setting("KITE_RATE_BACKOFF", 0.5)))
    if isinstance(exc, kex.InputException | kex.OrderException):
        return BrokerRejected(message, code="kite_rejected")
    if isinstance(exc, kex.PermissionException):
        return BrokerRejected(f"{message} (Kite refused this call; check the app's permissions and registered IP)",
                              code="kite_permission")
    if isinstance(exc, kex.NetworkException | kex.DataException) or (
            isinstance(exc, kex.KiteException) and exc.code >= 500):
        return unsure(f"Kite answered {exc.code}: {message}", code="kite_unavailable")
    if isinstance(exc, kex.KiteException):
        return BrokerRejected(message, code="kite_error")
    if isinstance(exc, requests.Timeout):
        return unsure(f"No answer from Kite in time ({message})", code="kite_timeout")
    if isinstance(exc, requests.ConnectionError):
        return unsure(f"Connection to Kite failed ({message})", code="kite_connection")
    if isinstance(exc, requests.RequestException):
        return unsure(f"Request to Kite failed ({message})", code="kite_connection")
    raise exc


def kite_login_url(account: BrokerAccount, *, state: str = "") -> str:
    """Kite's login page for this account's API key; Kite hands ``state`` back to the redirect URL."""
    url = KiteConnect(api_key=account.api_key, root=kite_root()).login_url()
    return url + ("&" + urlencode({"redirect_params": urlencode({"state": state})}) if state else "")


def kite_session_exchange(*, account: BrokerAccount, request_token: str) -> BrokerAccount:
    """Exchange the ``request_token`` from Kite's login redirect for the day's access token.

    The token is stored encrypted on the account, which becomes active again.
    """
    from accounts.services import audit_record

    if not (account.api_key and account.api_secret):
        raise BrokerAuthError("Enter the Kite API key and API secret of your Kite Connect app first.",
                              code="kite_no_credentials")
    client = build_client(account, access_token="")
    try:
        session = client.generate_session(request_token, api_secret=account.api_secret)
    except Exception as exc:  # noqa: BLE001 - translate() re-raises what it does not know
        error = translate(exc, placing=False)
        if isinstance(error, BrokerAuthError):
            error = BrokerAuthError(f"Kite login failed: {exc} Start the login again from the account page.",
                                    code="kite_login_failed")
        raise error from exc
    account.access_token = session["access_token"]
    account.options = {**(account.options or {}), "user_id": session.get("user_id", ""),
                       "session_date": timezone.localdate(timezone=_ist()).isoformat()}
    account.status, account.status_message, account.last_sync = BrokerAccount.Status.ACTIVE, "", timezone.now()
    account.save(update_fields=["access_token", "options", "status", "status_message", "last_sync"])
    audit_record(user=account.owner, action="account.kite_login", target=str(account),
                 details={"user_id": session.get("user_id", "")})
    return account


def _ist():
    from zoneinfo import ZoneInfo

    return ZoneInfo("Asia/Kolkata")


class KiteAdapter(BrokerAdapter):
    broker = Broker.KITE

    def __init__(self, account: BrokerAccount, *, client: KiteConnect | None = None):
        super().__init__(account)
        if client is not None:
            self.client = client

    @cached_property
    def client(self) -> KiteConnect:
        return build_client(self.account)

    @property
    def options(self) -> dict:
        return self.account.options or {}

    @property
    def fill_wait(self) -> float:
        return float(self.options.get("fill_wait", _setting("KITE_FILL_WAIT", 2.0)))

    def _limit_key(self, kind: str) -> str:
        # Kite's limits are per user, whatever the API key: key by the Kite user id once known.
        return f"kite:{kind}:{self.options.get('user_id') or f'account{self.account.pk}'}"

    def _call(self, fn, *args, placing: bool = False, **kwargs):
        if not self.account.api_key or not self.client.access_token:
            raise BrokerAuthError("This Kite account is not logged in: log in to Kite to start trading.",
                                  code="kite_token")
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - translate() re-raises what it does not know
            raise translate(exc, placing=placing) from exc

    # symbols ----------------------------------------------------------------------------------------------
    def _exchanges(self, bare: list[str]) -> dict[str, Instrument]:
        found: dict[str, Instrument] = {}
        rows = Instrument.objects.filter(broker=Broker.KITE, exchange__in=EXCHANGES, tradingsymbol__in=bare)
        for row in sorted(rows, key=lambda r: EXCHANGES.index(r.exchange)):
            found.setdefault(row.tradingsymbol, row)
        return found

    def _locate(self, symbol: str, extra: dict) -> tuple[str, str]:
        exchange, _, tradingsymbol = symbol.rpartition(":")
        exchange = exchange or extra.get("exchange") or ""
        if not exchange:
            row = self._exchanges([tradingsymbol]).get(tradingsymbol)
            exchange = row.exchange if row else self.options.get("exchange", "NFO")
        return exchange, tradingsymbol

    @staticmethod
    def _display(exchange: str, tradingsymbol: str) -> str:
        return tradingsymbol if exchange in BARE_EXCHANGES else f"{exchange}:{tradingsymbol}"

    # orders -----------------------------------------------------------------------------------------------
    def _params(self, request: OrderRequest, exchange: str, tradingsymbol: str) -> dict:
        extra, options = request.extra, self.options
        product = extra.get("product") or options.get("product") or (
            "NRML" if exchange in DERIVATIVE_EXCHANGES else "CNC")
        if request.order_type == "stop":
            order_type = "SL" if request.price else "SL-M"
        elif request.order_type in ORDER_TYPES:
            order_type = ORDER_TYPES[request.order_type]
        else:
            raise BrokerRejected(f"Kite does not take {request.order_type} orders", code="unsupported_type")
        params = {"variety": extra.get("variety") or options.get("variety") or "regular", "exchange": exchange,
                  "tradingsymbol": tradingsymbol, "transaction_type": request.side.upper(), "product": product,
                  "order_type": order_type, "validity": extra.get("validity") or "DAY",
                  "tag": kite_tag(request.client_order_id)}
        if order_type in ("LIMIT", "SL"):
            price = request.price if request.price is not None else request.trigger_price
            if price is None:
                raise BrokerRejected(f"A {request.order_type} order needs a price", code="missing_price")
            params["price"] = str(price)
        if order_type in ("SL", "SL-M"):
            trigger = request.trigger_price if request.trigger_price is not None else request.price
            if trigger is None:
                raise BrokerRejected("A stop order needs a trigger price", code="missing_price")
            params["trigger_price"] = str(trigger)
        if order_type in ("MARKET", "SL-M"):
            params["market_protection"] = extra.get("market_protection", options.get("market_protection", -1))
        return params

    def _slices(self, qty: int, exchange: str, tradingsymbol: str, extra: dict) -> list[int]:
        """One quantity, or several under the freeze limit. The engine may pass ``freeze_qty`` and
        ``lot_size`` in ``extra`` (then no database read here); else they come from the Instrument row."""
        from brokers.services.instruments import FreezeSplitError, freeze_split

        freeze, lot = extra.get("freeze_qty"), extra.get("lot_size")
        if "freeze_qty" not in extra or (freeze and not lot):
            row = Instrument.objects.filter(broker=Broker.KITE, exchange=exchange, tradingsymbol=tradingsymbol).first()
            if row is not None:
                freeze = freeze if "freeze_qty" in extra else row.freeze_qty
                lot = lot or row.lot_size
        if not freeze or qty <= int(freeze):
            return [qty]
        if not lot:
            raise BrokerRejected(f"Quantity {qty} is above the freeze limit {int(freeze)} and the lot size is unknown:"
                                 " sync the Kite instruments first.", code="unknown_lot_size")
        try:
            return freeze_split(qty, lot, freeze)
        except FreezeSplitError as exc:
            raise BrokerRejected(exc.message, code="freeze_limit") from exc

    def place_order(self, request: OrderRequest) -> OrderResult:
        exchange, tradingsymbol = self._locate(request.symbol, request.extra)
        if request.qty <= 0 or request.qty != request.qty.to_integral_value():
            raise BrokerRejected(f"Kite quantities are whole units; got {request.qty}", code="bad_quantity")
        params = self._params(request, exchange, tradingsymbol)
        qty = self._closable(params, int(request.qty)) if request.reduce_only else int(request.qty)
        slices = self._slices(qty, exchange, tradingsymbol, request.extra)
        order_ids: list[str] = []
        for n, quantity in enumerate(slices, start=1):
            try:
                order_ids.append(self._place_one({**params, "quantity": quantity}, placed=order_ids,
                                                 sliced=len(slices) > 1))
            except (BrokerRejected, BrokerTransient, BrokerAuthError) as exc:
                if not order_ids:
                    raise
                # Earlier slices are live at Kite: report them (the engine books what filled) rather
                # than an error that would leave them unrecorded.
                result = self._confirm(order_ids)
                note = f"Slice {n} of {len(slices)} ({quantity}) and later not placed: {exc.message}"
                return replace(result, reject_reason="; ".join(filter(None, [result.reject_reason, note])),
                               raw={**result.raw, "unplaced_qty": sum(slices[n - 1:])})
        result = self._confirm(order_ids)
        if qty < request.qty:  # the rest was closed outside TradeFlow: the engine books it (not_held_qty)
            result = replace(result, raw={**result.raw, "not_held_qty": str(request.qty - qty)})
        return result

    def _closable(self, params: dict, qty: int) -> int:
        """What a closing order may take off. Kite has no reduce-only flag: a close sent after the position was
        closed in the Kite app would open a new one (buying back a short that is gone is a new long; selling a
        hedge that is gone is a naked short). So a close takes at most what Kite holds on the other side."""
        where = (params["exchange"], params["tradingsymbol"], params["product"])
        held = sum(int(_dec(p.get("quantity"))) for p in self._call(self.client.positions).get("net", [])
                   if (p.get("exchange"), p.get("tradingsymbol"), p.get("product")) == where)
        closable = -held if params["transaction_type"] == "BUY" else held
        if closable <= 0:
            raise BrokerRejected(f"Kite holds no {params['tradingsymbol']} ({params['product']}) position to close: "
                                 "it was closed outside TradeFlow. Nothing was sent", code="not_held")
        return min(qty, closable)

    def _place_one(self, params: dict, *, placed: list[str], sliced: bool) -> str:
        retries = int(_setting("KITE_RATE_RETRIES", 2))
        backoff = float(_setting("KITE_RATE_BACKOFF", 0.5))
        limits = _setting("KITE_ORDER_LIMITS", ((10, 1.1), (400, 61.0)))
        for attempt in range(retries + 1):
            ratelimit.acquire(self._limit_key("orders"), limits, timeout=float(_setting("KITE_RATE_WAIT", 5.0)))
            try:
                return str(self._call(self.client.place_order, placing=True, **params))
            except BrokerTransient as exc:
                if exc.code != "kite_rate_limited" or attempt == retries:
                    if exc.code == "kite_rate_limited":
                        exc.retry_after = backoff * 2 ** (attempt + 1)
                    raise
                # A 429 means Kite did not take the order: safe to send again after a pause.
                time.sleep(backoff * 2**attempt * random.uniform(1.0, 1.2))
            except BrokerAmbiguous:
                if not sliced:
                    raise
                # Mid-way through a split order: settle this slice here by its tag, so the engine never
                # sees a half-placed leg as the whole leg.
                order_id = self._find_new_slice(params["tag"], placed)
                if order_id is None:
                    raise
                return order_id
        raise AssertionError("unreachable")

    def _find_new_slice(self, tag: str, placed: list[str]) -> str | None:
        try:
            rows = self._tagged(tag)
        except BrokerError:
            return None
        new = [row["order_id"] for row in rows if row["order_id"] not in placed]
        return new[-1] if new else None

    def _tagged(self, tag: str) -> list[dict]:
        return [o for o in self._call(self.client.orders) if o.get("tag") == tag or tag in (o.get("tags") or [])]

    def _confirm(self, order_ids: list[str]) -> OrderResult:
        """Read the order book until the orders are done or ``KITE_FILL_WAIT`` passes."""
        deadline = time.monotonic() + self.fill_wait
        pause = 0.05
        rows: list[dict] = []
        while True:
            try:
                book = {o["order_id"]: o for o in self._call(self.client.orders)}
            except BrokerError:
                break  # the orders exist (we hold their ids): their fate is for order_status later
            rows = [book[i] for i in order_ids if i in book]
            if len(rows) == len(order_ids) and all(r["status"] in TERMINAL for r in rows):
                return self._aggregate(rows)
            if time.monotonic() + pause > deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        if len(rows) == len(order_ids):
            return self._aggregate(rows)
        return OrderResult(broker_order_id=order_ids[0], status="open", raw={"order_ids": order_ids})

    @staticmethod
    def _aggregate(rows: list[dict]) -> OrderResult:
        statuses = [r["status"] for r in rows]
        filled = sum((_dec(r.get("filled_quantity")) for r in rows), Decimal(0))
        value = sum((_dec(r.get("average_price")) * _dec(r.get("filled_quantity")) for r in rows), Decimal(0))
        reasons = [r.get("status_message") or "" for r in rows if r["status"] == "REJECTED"]
        raw = {"order_ids": [r["order_id"] for r in rows], "statuses": statuses}
        if any(s not in TERMINAL for s in statuses):
            status = "open"
        elif filled > 0:
            status = "filled"
        elif "REJECTED" in statuses:
            status = "rejected"
        else:
            status = "cancelled"
        reason = "; ".join(r for r in reasons if r) or ("Rejected by Kite" if status == "rejected" else "")
        return OrderResult(broker_order_id=rows[0]["order_id"], status=status, filled_qty=filled,
                           avg_price=(value / filled) if filled else None, reject_reason=reason, raw=raw)

    def order_status(self, *, client_order_id: str, symbol: str = "") -> OrderResult | None:
        rows = self._tagged(kite_tag(client_order_id))
        return self._aggregate(rows) if rows else None

    def cancel_order(self, *, client_order_id: str, broker_order_id: str = "", symbol: str = "") -> None:
        rows = [r for r in self._tagged(kite_tag(client_order_id))
                if r["status"] not in TERMINAL and (not broker_order_id or r["order_id"] == broker_order_id)]
        if not rows:
            raise BrokerRejected(f"No open Kite order tagged {kite_tag(client_order_id)} to cancel", code="not_open")
        for row in rows:
            self._call(self.client.cancel_order, variety=row.get("variety") or "regular", order_id=row["order_id"])

    # account ----------------------------------------------------------------------------------------------
    def positions(self) -> list[BrokerPosition]:
        merged: dict[str, list[Decimal]] = {}
        for p in self._call(self.client.positions).get("net", []):
            qty = _dec(p.get("quantity"))
            if not qty:
                continue
            key = self._display(p["exchange"], p["tradingsymbol"])
            total = merged.setdefault(key, [Decimal(0), Decimal(0), _dec(p.get("last_price"))])
            total[0] += qty
            total[1] += qty * _dec(p.get("average_price"))
        return [BrokerPosition(symbol=key, qty=qty, avg_price=(cost / qty) if qty else Decimal(0), last_price=last)
                for key, (qty, cost, last) in merged.items() if qty]

    def fills(self, symbol: str, *, since=None) -> list[BrokerFill]:
        """Today's buys and sells of ``symbol`` (TradeFlow's name for it), each side as one total at its average
        price, from the ``day`` rows of Kite's positions (``buy_quantity``/``buy_price``, ``sell_quantity``/
        ``sell_price``: today's trades only; the ``net`` rows also carry what was brought forward overnight).
        Kite has no per-account trade list with our tags in the positions, so ``order_id`` is empty and ``since``
        is ignored: the window is always today (Kite's trading day). Rows of every product are added up, as
        ``positions()`` does; an empty list when nothing was traded today."""
        exchange, tradingsymbol = self._locate(symbol, {})
        totals = {"buy": [Decimal(0), Decimal(0)], "sell": [Decimal(0), Decimal(0)]}
        for p in self._call(self.client.positions).get("day", []):
            if (p.get("exchange"), p.get("tradingsymbol")) != (exchange, tradingsymbol):
                continue
            for side in ("buy", "sell"):
                qty = abs(_dec(p.get(f"{side}_quantity")))
                totals[side][0] += qty
                totals[side][1] += qty * _dec(p.get(f"{side}_price"))
        return [BrokerFill(symbol=symbol, side=side, qty=qty, price=value / qty)
                for side, (qty, value) in totals.items() if qty]

    def last_prices(self, symbols: list[str]) -> dict[str, Decimal]:
        """Last prices in one ``/quote/ltp`` call per 1,000 symbols; unknown symbols are left out."""
        if not symbols:
            return {}
        bare = [s for s in symbols if ":" not in s]
        known = self._exchanges(bare) if bare else {}
        default = self.options.get("exchange", "NFO")
        keys = {s: s if ":" in s else f"{known[s].exchange if s in known else default}:{s}" for s in symbols}
        wanted = list(dict.fromkeys(keys.values()))
        quotes: dict = {}
        for start in range(0, len(wanted), 1000):
            ratelimit.acquire(self._limit_key("quote"), _setting("KITE_QUOTE_LIMITS", ((1, 1.0),)),
                              timeout=float(_setting("KITE_QUOTE_WAIT", 2.0)))
            quotes.update(self._call(self.client.ltp, wanted[start:start + 1000]))
        return {s: _dec(quotes[k]["last_price"]) for s, k in keys.items() if k in quotes}

    def balance(self) -> Balance:
        equity = self._call(self.client.margins).get("equity") or {}
        available = equity.get("available") or {}
        return Balance(currency="INR", cash=_dec(available.get("cash")), equity=_dec(equity.get("net")))

    def validate_credentials(self) -> None:
        self._call(self.client.profile)

    def instruments(self, exchange: str | None = None) -> list[dict]:
        """Kite's instruments list (parsed CSV rows) for ``instruments_sync_kite``; any logged-in account
        will do, the list is the same for everyone."""
        return self._call(self.client.instruments, exchange)
