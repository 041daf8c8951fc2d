"""Binance spot and USDⓈ-M futures through python-binance's ``Client`` (the only module importing it).

Market: ``request.extra["market"]``, else ``account.options["market"]`` ("spot" by default); testnet:
``account.options["testnet"]``. Base URLs come from settings (``BINANCE_API_URL``, ``BINANCE_FUTURES_URL``,
``BINANCE_SAPI_URL`` and the ``BINANCE_TESTNET_*`` pair), so tests point the real SDK at a local server.

Errors, as the engine needs them: a filter or balance refusal is ``BrokerRejected`` carrying Binance's code and
message; 429, -1003, -1021 and maintenance are ``BrokerTransient`` (``retry_after`` from ``Retry-After``); a
timeout, dropped connection, 5xx or -1007 while *placing* is ``BrokerAmbiguous`` (look the order up by client id
before resending). Request weight and IP bans belong to our outbound IP, not to one customer, so they are kept
in the shared cache per API domain: after a 418 every Binance account on that domain fails fast, sending
nothing, until the ban ends.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal

import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException, BinanceRequestException
from django.conf import settings
from django.core.cache import cache

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
from brokers.calc import round_to_step
from brokers.models import Broker

log = logging.getLogger(__name__)

URLS = {
    "BINANCE_API_URL": "https://api.binance.com/api",
    "BINANCE_SAPI_URL": "https://api.binance.com/sapi",
    "BINANCE_FUTURES_URL": "https://fapi.binance.com/fapi",
    "BINANCE_TESTNET_API_URL": "https://testnet.binance.vision/api",
    "BINANCE_TESTNET_FUTURES_URL": "https://testnet.binancefuture.com/fapi",
}
WEIGHT_LIMITS = {"spot": 6000, "futures": 2400}
AUTH_CODES = {-2014, -2015, -1022}
UNKNOWN_STATUS_CODES = {-1006, -1007}
BUSY_CODES = {-1001, -1008, -1016}
HINTS = {
    -2022: "the Binance position is smaller than TradeFlow's record or already closed (stop or target hit?)",
    -2019: "not enough margin in the futures wallet for this size and leverage",
    -2010: "check the free balance in your Binance spot wallet",
    -4164: "the order value is under Binance's minimum for this symbol",
    -2021: "the stop or target price is already on the wrong side of the market",
    -4061: "this futures account is in Hedge Mode; TradeFlow trades One-way Mode: switch it in Binance → Futures → "
           "Preferences → Position Mode (with no open positions or orders)",
}
HEDGE_MODE_REFUSAL = (
    "This Binance futures account is in Hedge Mode (long and short positions side by side). TradeFlow trades in "
    "One-way Mode, where a sell closes a long: switch it in Binance → Futures → Preferences → Position Mode → "
    "One-way Mode (possible with no open positions or orders), then connect again."
)
BAN_UNTIL = re.compile(r"banned until (\d{13})")
# Binance allows ``.A-Za-z0-9:/_-``, but python-binance signs values unencoded while the body is sent
# percent-encoded, so ``:`` and ``/`` would fail the signature (-1022): keep to characters that need no encoding.
SAFE_CLIENT_ID = re.compile(r"^[.A-Za-z0-9_-]{1,36}$")
# requests reads the proxy and CA bundle environment variables again on every request: about 0.6 ms of CPU per
# Binance call here, a sixth of the SDK's cost. They are read once, at start-up: with no proxy variable set, the
# SDK's session skips the lookup (``trust_env`` off) and is given the CA bundle the variables name, as requests
# would have picked it; with a proxy set, requests keeps reading them on every call as before.
ENV_PROXIES = bool(urllib.request.getproxies())
ENV_CA_BUNDLE = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
STATUS = {"FILLED": "filled", "NEW": "open", "PARTIALLY_FILLED": "open", "PENDING_NEW": "open",
          "REJECTED": "rejected"}
WITHDRAW_REFUSAL = (
    "This Binance API key can withdraw funds, so TradeFlow will not store it: if it ever leaked, whoever holds it "
    "could empty your account (that is how keys stolen from copy-trading platforms were used). In Binance → API "
    "Management, untick “Enable Withdrawals” (or create a new key with only Reading and Trading), then connect again."
)


def _setting(name: str, default=None):
    return getattr(settings, name, default)


def _num(value) -> str:
    """A Decimal as Binance parses it: plain digits, no exponent, no trailing zeros."""
    text = format(Decimal(value).normalize(), "f")
    return text


def _dec(value) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal("0")


def _suffixed(client_order_id: str, suffix: str) -> str:
    return f"{client_order_id[:36 - len(suffix)]}{suffix}"


def _retry_after(response) -> float | None:
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


class BinanceAdapter(BrokerAdapter):
    broker = Broker.BINANCE

    def __init__(self, account):
        super().__init__(account)
        self._client: Client | None = None
        self.usage: dict[str, dict] = {}  # market -> last X-MBX-USED-WEIGHT-1M / ORDER-COUNT-* seen
        self.warnings: list[str] = []

    # -- plumbing ------------------------------------------------------------------------------------------
    @property
    def options(self) -> dict:
        return self.account.options or {}

    @property
    def testnet(self) -> bool:
        return bool(self.options.get("testnet"))

    def market_for(self, extra: dict | None = None) -> str:
        market = str((extra or {}).get("market") or self.options.get("market") or "spot").lower()
        if market not in ("spot", "futures"):
            raise BrokerRejected(f"Unknown Binance market {market!r}: use \"spot\" or \"futures\"", code="bad_market")
        return market

    def domain(self, market: str) -> str:
        """Limits and bans are per outbound IP and per API host: one key per (market, testnet)."""
        return f"{market}-testnet" if self.testnet else market

    @property
    def client(self) -> Client:
        if self._client is None:
            if not self.account.api_key or not self.account.api_secret:
                raise BrokerAuthError("No Binance API key and secret saved for this account: add them first",
                                      code="no_credentials")
            params: dict = {"timeout": float(_setting("BINANCE_TIMEOUT", 10))}
            if self.options.get("proxy"):
                params["proxies"] = {"http": self.options["proxy"], "https": self.options["proxy"]}
            client = Client(self.account.api_key, self.account.api_secret, requests_params=params,
                            testnet=self.testnet, ping=False)
            if not ENV_PROXIES:
                client.session.trust_env = False
                if ENV_CA_BUNDLE:
                    client.session.verify = ENV_CA_BUNDLE
            client.API_URL = _setting("BINANCE_API_URL", URLS["BINANCE_API_URL"])
            client.MARGIN_API_URL = _setting("BINANCE_SAPI_URL", URLS["BINANCE_SAPI_URL"])
            client.FUTURES_URL = _setting("BINANCE_FUTURES_URL", URLS["BINANCE_FUTURES_URL"])
            client.API_TESTNET_URL = _setting("BINANCE_TESTNET_API_URL", URLS["BINANCE_TESTNET_API_URL"])
            client.FUTURES_TESTNET_URL = _setting("BINANCE_TESTNET_FUTURES_URL", URLS["BINANCE_TESTNET_FUTURES_URL"])
            self._client = client
        return self._client

    def _call(self, market: str, method: str, *, placing: bool = False, **params):
        """One SDK call with ban check, usage tracking, clock resync on -1021, and error translation."""
        domain = self.domain(market)
        ban_key, offset_key = f"binance:ban:{domain}", f"binance:offset:{domain}"
        shared = cache.get_many([ban_key, offset_key])  # one round trip for both
        until = shared.get(ban_key)
        if until and until > time.time():
            raise BrokerTransient(self._ban_text(market, until), code="binance_ip_ban", retry_after=until - time.time())
        client = self.client
        client.timestamp_offset = shared.get(offset_key, 0)
        for attempt in (1, 2):
            client.response = None
            try:
                result = getattr(client, method)(**params)
            except BinanceAPIException as exc:
                self._track(market, exc.response)
                if exc.code == -1021 and attempt == 1:  # rejected before processing: safe to resend
                    self._sync_clock(market)
                    continue
                raise self._translate(exc, market, placing) from exc
            except requests.exceptions.ConnectTimeout as exc:  # never connected: nothing was sent
                raise BrokerTransient(f"Binance did not answer the connection: {exc}", code="connect_timeout",
                                      retry_after=5) from exc
            except (requests.exceptions.Timeout, requests.exceptions.ConnectionError, BinanceRequestException) as exc:
                text = f"No usable answer from Binance ({type(exc).__name__})"
                if placing:
                    raise BrokerAmbiguous(f"{text}; the order may exist", code="no_answer") from exc
                raise BrokerTransient(text, code="no_answer", retry_after=2) from exc
            self._track(market, client.response)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _sync_clock(self, market: str) -> None:
        started = time.time()
        try:
            server = (self.client.futures_time() if market == "futures" else self.client.get_server_time())
        except (BinanceAPIException, BinanceRequestException, requests.RequestException) as exc:
            log.warning("could not read Binance %s server time: %s", market, exc)
            return
        server = server["serverTime"]
        offset = int(server - (started + time.time()) * 500)  # against the midpoint of the round trip
        cache.set(f"binance:offset:{self.domain(market)}", offset, 3600)
        self.client.timestamp_offset = offset
        log.warning("Binance %s clock differs from ours by %d ms; signing with the offset", market, offset)

    def _translate(self, exc: BinanceAPIException, market: str, placing: bool) -> BrokerError:
        code, status, msg = exc.code, exc.status_code, (exc.message or "")[:300]  # 5xx pages are HTML
        raw = {"code": code, "msg": msg, "status": status}
        if status == 418:
            until = self._ban(market, exc)
            return BrokerTransient(self._ban_text(market, until), code="binance_ip_ban", raw=raw,
                                   retry_after=max(until - time.time(), 1))
        if status == 429 or code in (-1003, -1015):
            return BrokerTransient(f"Binance rate limit: {msg}", code=str(code or 429), raw=raw,
                                   retry_after=_retry_after(exc.response) or 10)
        if code in AUTH_CODES:
            return BrokerAuthError(
                f"Binance refused the API key: {msg} Check that the key is active, that its IP whitelist includes "
                f"TradeFlow's server, and that {market} trading is enabled for it.", code=str(code), raw=raw)
        if code == -1021:  # still out of the window after a resync: our clock is jumping
            return BrokerTransient(f"Binance refused our clock: {msg}", code=str(code), raw=raw, retry_after=5)
        if code in BUSY_CODES:
            return BrokerTransient(f"Binance is busy: {msg}", code=str(code), raw=raw, retry_after=2)
        if code in UNKNOWN_STATUS_CODES or status >= 500:
            text = f"Binance did not confirm the request: {msg}"
            if placing:
                return BrokerAmbiguous(text, code=str(code or status), raw=raw)
            return BrokerTransient(text, code=str(code or status), raw=raw, retry_after=2)
        hint = HINTS.get(code)
        return BrokerRejected(f"{msg} (Binance code {code}{'; ' + hint if hint else ''})", code=str(code), raw=raw)

    # -- rate limits and bans (shared by every account behind our IP) --------------------------------------
    def _track(self, market: str, response) -> None:
        if response is None:
            return
        usage: dict = {"minute": int(time.time() // 60)}
        for name, value in response.headers.items():
            lowered = name.lower()
            if lowered in ("x-mbx-used-weight-1m", "x-sapi-used-ip-weight-1m"):
                usage["used_weight_1m"] = int(value)
            elif lowered.startswith("x-mbx-order-count-"):
                usage["order_count_" + lowered.rsplit("-", 1)[1]] = int(value)
        if len(usage) > 1:
            self.usage.setdefault(market, {}).update(usage)
            if "used_weight_1m" in usage:
                cache.set(f"binance:weight:{self.domain(market)}", usage, 60)

    def used_weight(self, market: str | None = None) -> int | None:
        """The request weight Binance last reported for our IP this minute (any account), if known."""
        usage = cache.get(f"binance:weight:{self.domain(market or self.market_for())}") or {}
        return usage.get("used_weight_1m") if usage.get("minute") == int(time.time() // 60) else None

    def _guard_weight(self, market: str) -> None:
        """Reads (prices, positions) yield to orders when the IP's minute budget is nearly spent."""
        used = self.used_weight(market)
        headroom = float(_setting("BINANCE_WEIGHT_HEADROOM", 0.9))
        if used is not None and used >= WEIGHT_LIMITS[market] * headroom:
            raise BrokerTransient(f"Binance request weight at {used}/{WEIGHT_LIMITS[market]} this minute; "
                                  "deferring reads to keep room for orders", code="weight_budget",
                                  retry_after=61 - time.time() % 60)

    def _ban(self, market: str, exc: BinanceAPIException) -> float:
        match = BAN_UNTIL.search(exc.message or "")
        if match:
            until = int(match.group(1)) / 1000
        else:
            until = time.time() + (_retry_after(exc.response) or 120)
        cache.set(f"binance:ban:{self.domain(market)}", until, timeout=int(until - time.time()) + 5)
        log.error("Binance %s banned our IP until %s: %s", market, until, exc.message)
        return until

    def ban_until(self, market: str | None = None) -> datetime | None:
        until = cache.get(f"binance:ban:{self.domain(market or self.market_for())}")
        return datetime.fromtimestamp(until, tz=UTC) if until and until > time.time() else None

    def _ban_text(self, market: str, until: float) -> str:
        when = datetime.fromtimestamp(until, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (f"IP banned by Binance until {when} after too many requests; TradeFlow sends nothing to Binance "
                f"{market} until then and will retry after")

    def _refuse_if_banned(self, market: str) -> None:
        until = cache.get(f"binance:ban:{self.domain(market)}")
        if until and until > time.time():
            raise BrokerTransient(self._ban_text(market, until), code="binance_ip_ban",
                                  retry_after=until - time.time())

    # -- orders --------------------------------------------------------------------------------------------
    def exchange_info(self, market: str) -> dict:
        return self._call(market, "futures_exchange_info" if market == "futures" else "get_exchange_info")

    def place_order(self, request: OrderRequest) -> OrderResult:
        market = self.market_for(request.extra)
        if not SAFE_CLIENT_ID.match(request.client_order_id):
            raise BrokerRejected(f"Client order id {request.client_order_id!r} cannot be sent to Binance: use 1-36 "
                                 "of A-Z a-z 0-9 . _ - (check ORDER_ID_PREFIX)", code="bad_client_id")
        if request.order_type not in ("market", "limit"):
            raise BrokerRejected(f"TradeFlow sends only market and limit entries to Binance, not {request.order_type}",
                                 code="unsupported_type")
        # Remember where it went before sending: an ambiguous answer is looked up in the same market.
        cache.set(f"binance:market:{self.account.pk}:{request.client_order_id}", market, 7 * 86400)
        params = {"symbol": request.symbol, "side": request.side.upper(), "type": request.order_type.upper(),
                  "quantity": _num(request.qty), "newClientOrderId": request.client_order_id}
        if request.order_type == "limit":
            params |= {"timeInForce": "GTC", "price": _num(request.price)}
        if market == "spot":
            if request.reduce_only:  # protective orders hold the coins: free them, sell what is there
                self._cancel_ours("spot", request.symbol)
                params["quantity"] = _num(self._spot_sellable(request.symbol, request.qty))
            response = self._call("spot", "create_order", placing=True, newOrderRespType="FULL", **params)
            return self._result("spot", response)
        if request.reduce_only:
            params["reduceOnly"] = "true"
        else:
            self._prepare_futures_symbol(request.symbol, request.extra)
        response = self._call("futures", "futures_create_order", placing=True, newOrderRespType="RESULT", **params)
        result = self._result("futures", response)
        if result.status == "open" and request.order_type == "market":
            result = self._await_fill(request.symbol, request.client_order_id) or result
        if request.reduce_only:  # closed first, then its stop/target: never a moment unprotected and open
            self._cancel_ours("futures", request.symbol)
        return result

    def _prepare_futures_symbol(self, symbol: str, extra: dict) -> None:
        margin_type = str(extra.get("margin_type") or self.options.get("margin_type") or "").upper()
        if margin_type:
            try:
                self._call("futures", "futures_change_margin_type", symbol=symbol,
                           marginType="CROSSED" if margin_type.startswith("CROSS") else margin_type)
            except BrokerRejected as exc:
                if exc.code in ("-4047", "-4048"):  # open orders/position: Binance keeps the current type
                    self.warnings.append(f"{symbol}: margin type left unchanged ({exc.message})")
                elif exc.code != "-4046":  # -4046 "No need to change margin type." is success
                    raise
        leverage = extra.get("leverage") or self.options.get("leverage")
        if leverage:
            if Decimal(str(leverage)) != int(Decimal(str(leverage))):
                raise BrokerRejected(f"Binance leverage must be a whole number, not {leverage}", code="bad_leverage")
            self._call("futures", "futures_change_leverage", symbol=symbol, leverage=int(Decimal(str(leverage))))

    def _await_fill(self, symbol: str, client_order_id: str) -> OrderResult | None:
        for _ in range(3):
            time.sleep(0.2)
            found = self.order_status(client_order_id=client_order_id, symbol=symbol)
            if found and found.status != "open":
                return found
        return None

    @staticmethod
    def _result(market: str, response: dict) -> OrderResult:
        executed = _dec(response.get("executedQty"))
        quote = _dec(response.get("cumQuote" if market == "futures" else "cummulativeQuoteQty"))
        avg = _dec(response.get("avgPrice")) if market == "futures" else Decimal("0")
        if not avg and executed:
            avg = quote / executed
        status = STATUS.get(response.get("status", ""), "filled" if executed else "cancelled")
        return OrderResult(broker_order_id=str(response.get("orderId", "")), status=status, filled_qty=executed,
                           avg_price=avg or None, raw=response,
                           reject_reason="Binance rejected the order" if status == "rejected" else "")

    def _filters(self, symbol: str, market: str):
        """The symbol's exchange filters (cached exchangeInfo); an unknown symbol is a final rejection here."""
        from brokers.services.binance_rules import BinanceRuleError, symbol_filters_get

        try:
            return symbol_filters_get(adapter=self, symbol=symbol, market=market)
        except BinanceRuleError as exc:
            raise BrokerRejected(exc.message, code=exc.code) from exc

    def _spot_sellable(self, symbol: str, qty: Decimal) -> Decimal:
        """``qty``, or the free coins rounded to the step when fees in the coin left fewer than that."""
        filters = self._filters(symbol, "spot")
        balances = self._call("spot", "get_account", omitZeroBalances="true")["balances"]
        free = next((_dec(b["free"]) for b in balances if b["asset"] == filters.base_asset), Decimal("0"))
        if free >= qty:
            return qty
        sellable = round_to_step(free, filters.step_size)
        if sellable <= 0:
            raise BrokerRejected(f"Nothing to sell: the free {filters.base_asset} balance on Binance is {free}",
                                 code="no_balance")
        log.info("selling %s %s (free balance) instead of %s", sellable, filters.base_asset, qty)
        return sellable

    def cancel_order(self, *, client_order_id: str, broker_order_id: str = "", symbol: str = "") -> None:
        if not symbol:
            raise BrokerRejected("Binance needs the symbol to cancel an order", code="symbol_required")
        market = self._markets_for(client_order_id)[0]
        ref = {"origClientOrderId": client_order_id} if client_order_id else {"orderId": broker_order_id}
        try:
            self._call(market, "futures_cancel_order" if market == "futures" else "cancel_order", symbol=symbol, **ref)
        except BrokerRejected as exc:
            if exc.code in ("-2011", "-2013"):
                raise BrokerRejected(f"Order {client_order_id or broker_order_id} is not open on Binance (already "
                                     "filled or cancelled)", code="not_open", raw=exc.raw) from exc
            raise

    def _markets_for(self, client_order_id: str) -> list[str]:
        known = cache.get(f"binance:market:{self.account.pk}:{client_order_id}")
        default = self.market_for()
        return [known] if known else [default, "futures" if default == "spot" else "spot"]

    def order_status(self, *, client_order_id: str, symbol: str = "") -> OrderResult | None:
        if not symbol:
            raise BrokerRejected("Binance needs the symbol to look an order up", code="symbol_required")
        for market in self._markets_for(client_order_id):
            try:
                response = self._call(market, "futures_get_order" if market == "futures" else "get_order",
                                      symbol=symbol, origClientOrderId=client_order_id)
            except BrokerRejected as exc:
                if exc.code in ("-2013", "-1121"):  # "Order does not exist." / not a symbol of this market
                    continue
                raise
            return self._result(market, response)
        return None

    # -- stop loss / take profit -------------------------------------------------------------------------------
    def place_protection(self, *, symbol: str, entry_side: str, qty: Decimal, client_order_id: str,
                         stop_loss: Decimal | None = None, take_profit: Decimal | None = None,
                         extra: dict | None = None) -> list[OrderResult]:
        """Stop loss and take profit for a filled entry: futures algo orders, or a spot OCO / single stop.

        Client ids are the entry's id + ``SL``/``TP`` (``OCO`` for the spot list), so a retry finds what an
        earlier attempt placed instead of doubling it. Prices are rounded to the symbol's tick first.
        """
        from brokers.services.binance_rules import BinanceRuleError, binance_price

        market = self.market_for(extra)
        if stop_loss is None and take_profit is None:
            return []
        filters = self._filters(symbol, market)
        try:
            sl = binance_price(symbol_filters=filters, price=stop_loss) if stop_loss is not None else None
            tp = binance_price(symbol_filters=filters, price=take_profit) if take_profit is not None else None
        except BinanceRuleError as exc:
            raise BrokerRejected(exc.message, code=exc.code) from exc
        exit_side = "SELL" if entry_side == "buy" else "BUY"
        if market == "futures":
            return self._futures_protection(symbol, exit_side, qty, client_order_id, sl, tp, extra or {})
        if exit_side != "SELL":
            raise BrokerRejected("Binance spot has no short positions: a stop loss or take profit applies only "
                                 "after a buy", code="spot_no_short")
        return [self._spot_protection(symbol, self._spot_sellable(symbol, qty), client_order_id, sl, tp)]

    def _futures_protection(self, symbol, exit_side, qty, client_order_id, sl, tp, extra) -> list[OrderResult]:
        close_position = (extra.get("protection") or self.options.get("protection", "close_position")) \
            == "close_position"
        # Earlier TradeFlow stops on this symbol would close the new position at old levels: replace them.
        self._cancel_ours("futures", symbol, keep={_suffixed(client_order_id, "SL"), _suffixed(client_order_id, "TP")})
        results = []
        for suffix, order_type, price in (("SL", "STOP_MARKET", sl), ("TP", "TAKE_PROFIT_MARKET", tp)):
            if price is None:
                continue
            algo_id = _suffixed(client_order_id, suffix)
            params = {"symbol": symbol, "side": exit_side, "type": order_type, "algoType": "CONDITIONAL",
                      "triggerPrice": _num(price), "clientAlgoId": algo_id,
                      "workingType": self.options.get("working_type", "MARK_PRICE")}
            if close_position:  # closes whatever the position is when it triggers; no quantity allowed
                params["closePosition"] = "true"
            else:
                params |= {"quantity": _num(qty), "reduceOnly": "true"}
            response = self._idempotent(
                lambda p=params: self._call("futures", "futures_create_algo_order", placing=True, **p),
                lambda a=algo_id: self._find("futures", "futures_get_algo_order", symbol, clientAlgoId=a),
                duplicate_code="-4116")
            results.append(OrderResult(broker_order_id=str(response["algoId"]), status="open", raw=response))
        return results

    def _spot_protection(self, symbol, qty, client_order_id, sl, tp) -> OrderResult:
        stop_id, target_id = _suffixed(client_order_id, "SL"), _suffixed(client_order_id, "TP")
        if sl is not None and tp is not None:
            params = {"symbol": symbol, "side": "SELL", "quantity": _num(qty), "aboveType": "LIMIT_MAKER",
                      "abovePrice": _num(tp), "belowType": "STOP_LOSS", "belowStopPrice": _num(sl),
                      "listClientOrderId": _suffixed(client_order_id, "OCO"), "aboveClientOrderId": target_id,
                      "belowClientOrderId": stop_id, "newOrderRespType": "RESULT"}
            place = lambda: self._call("spot", "create_oco_order", placing=True, **params)  # noqa: E731
            found_id = stop_id
        else:
            found_id = stop_id if sl is not None else target_id
            params = {"symbol": symbol, "side": "SELL", "type": "STOP_LOSS" if sl is not None else "TAKE_PROFIT",
                      "stopPrice": _num(sl if sl is not None else tp), "quantity": _num(qty),
                      "newClientOrderId": found_id, "newOrderRespType": "RESULT"}
            place = lambda: self._call("spot", "create_order", placing=True, **params)  # noqa: E731
        response = self._idempotent(
            place, lambda: self._find("spot", "get_order", symbol, origClientOrderId=found_id), duplicate_code="-2010")
        ref = response.get("orderListId", -1)
        return OrderResult(broker_order_id=str(ref if ref != -1 else response.get("orderId")), status="open",
                           raw=response)

    def _find(self, market: str, method: str, symbol: str, **ref) -> dict | None:
        try:
            found = self._call(market, method, symbol=symbol, **ref)
        except BrokerRejected as exc:
            if exc.code == "-2013":
                return None
            raise
        return found if found.get("algoStatus", found.get("status")) not in ("CANCELED", "EXPIRED") else None

    def _idempotent(self, place, find, *, duplicate_code: str) -> dict:
        """Place, retrying transient failures; after an unclear answer or a duplicate id, look before resending."""
        attempts = int(_setting("BINANCE_PROTECTION_ATTEMPTS", 3))
        for attempt in range(1, attempts + 1):
            try:
                return place()
            except BrokerAmbiguous:
                found = find()
                if found:
                    return found
                if attempt == attempts:
                    raise
            except BrokerRejected as exc:
                duplicate = exc.code == duplicate_code and "duplicate" in exc.message.lower()
                found = find() if duplicate else None  # an earlier attempt got through
                if found:
                    return found
                raise
            except BrokerTransient as exc:
                if exc.code == "binance_ip_ban" or attempt == attempts:
                    raise
                time.sleep(min(exc.retry_after or 0.5, float(_setting("BINANCE_RETRY_MAX_SLEEP", 2))))
        raise AssertionError("unreachable")  # pragma: no cover

    def cancel_protection(self, *, symbol: str, extra: dict | None = None) -> None:
        """Cancel TradeFlow's open stop/target orders on ``symbol`` (e.g. after a close resolved by lookup)."""
        self._cancel_ours(self.market_for(extra), symbol)

    def _cancel_ours(self, market: str, symbol: str, keep: set | frozenset = frozenset()) -> None:
        """Cancel TradeFlow's own open stop/target orders on ``symbol`` (ids carry ORDER_ID_PREFIX); leave the
        customer's manual orders alone. A failure here is logged: the close itself already happened or must."""
        prefix = settings.ORDER_ID_PREFIX
        try:
            if market == "futures":
                for algo in self._call("futures", "futures_get_open_algo_orders", symbol=symbol):
                    if algo["clientAlgoId"].startswith(prefix) and algo["clientAlgoId"] not in keep:
                        self._call("futures", "futures_cancel_algo_order", symbol=symbol, algoId=algo["algoId"])
                return
            lists_done: set = set()
            for order in self._call("spot", "get_open_orders", symbol=symbol):
                if not order["clientOrderId"].startswith(prefix) or order["orderListId"] in lists_done:
                    continue
                if order["orderListId"] != -1:  # cancelling one leg cancels the whole OCO list
                    lists_done.add(order["orderListId"])
                self._call("spot", "cancel_order", symbol=symbol, orderId=order["orderId"])
        except BrokerError as exc:
            if market == "spot":
                raise  # the coins stay locked by the OCO: selling now would fail anyway
            log.warning("could not cancel protective orders on %s: %s", symbol, exc.message)
            self.warnings.append(f"Stop/target orders on {symbol} may still be open: {exc.message}")

    # -- account ---------------------------------------------------------------------------------------------
    def positions(self) -> list[BrokerPosition]:
        """Futures: open positions. Spot has balances, not positions: non-zero coins priced in the quote asset,
        with an unknown (zero) average price."""
        market = self.market_for()
        self._guard_weight(market)
        if market == "futures":
            return [BrokerPosition(symbol=p["symbol"], qty=_dec(p["positionAmt"]), avg_price=_dec(p["entryPrice"]),
                                   last_price=_dec(p["markPrice"]) or None)
                    for p in self._call("futures", "futures_position_information") if _dec(p["positionAmt"])]
        quote = self.options.get("quote_asset", "USDT")
        balances = self._call("spot", "get_account", omitZeroBalances="true")["balances"]
        return [BrokerPosition(symbol=b["asset"] + quote, qty=_dec(b["free"]) + _dec(b["locked"]),
                               avg_price=Decimal("0"))
                for b in balances if b["asset"] != quote and _dec(b["free"]) + _dec(b["locked"])]

    def fills(self, symbol: str, *, since=None) -> list[BrokerFill] | None:
        """Futures: the account's fills on ``symbol`` from Binance's trade list (``GET /fapi/v1/userTrades``,
        weight 5, at most 1,000 fills and 7 days from ``since``), oldest first. None on spot (coins, not
        positions) and when the list came back full (1,000 fills: the newest may be missing)."""
        if self.market_for() != "futures":
            return None
        self._guard_weight("futures")
        params: dict = {"symbol": symbol, "limit": 1000}
        if since is not None:
            params["startTime"] = int(since.timestamp() * 1000)
        rows = self._call("futures", "futures_account_trades", **params)
        if len(rows) >= 1000:
            return None
        return [BrokerFill(symbol=r["symbol"], side=str(r["side"]).lower(), qty=abs(_dec(r["qty"])),
                           price=_dec(r["price"]), order_id=str(r["orderId"]), trade_id=int(r["id"]))
                for r in sorted(rows, key=lambda r: (int(r["time"]), int(r["id"])))]

    def last_prices(self, symbols: list[str], market: str | None = None) -> dict[str, Decimal]:
        """Last prices for many symbols in one request (spot ``symbols=[…]``; futures: the all-symbols ticker)."""
        wanted = sorted(set(symbols))
        if not wanted:
            return {}
        market = market or self.market_for()
        self._guard_weight(market)
        if len(wanted) == 1:
            method = "futures_symbol_ticker" if market == "futures" else "get_symbol_ticker"
            row = self._call(market, method, symbol=wanted[0])
            return {row["symbol"]: _dec(row["price"])}
        if market == "futures":
            rows = self._call("futures", "futures_symbol_ticker")
        else:
            try:
                rows = self._call("spot", "get_symbol_ticker", symbols=json.dumps(wanted, separators=(",", ":")))
            except BrokerRejected as exc:
                if exc.code != "-1121":  # one unknown symbol fails the list: fall back to every ticker
                    raise
                rows = self._call("spot", "get_symbol_ticker")
        return {row["symbol"]: _dec(row["price"]) for row in rows if row["symbol"] in wanted}

    def balance(self) -> Balance:
        market = self.market_for()
        self._guard_weight(market)
        if market == "futures":
            asset = self.options.get("margin_asset", "USDT")
            row = next((r for r in self._call("futures", "futures_account_balance") if r["asset"] == asset), None)
            if row is None:
                return Balance(currency=asset, cash=Decimal("0"), equity=Decimal("0"))
            wallet = _dec(row["balance"])
            return Balance(currency=asset, cash=wallet, equity=wallet + _dec(row["crossUnPnl"]))
        quote = self.options.get("quote_asset", "USDT")
        balances = self._call("spot", "get_account", omitZeroBalances="true")["balances"]
        held = {b["asset"]: _dec(b["free"]) + _dec(b["locked"]) for b in balances}
        cash = held.pop(quote, Decimal("0"))
        prices = self.last_prices([asset + quote for asset in held], market="spot") if held else {}
        value = sum((qty * prices.get(asset + quote, Decimal("0")) for asset, qty in held.items()), Decimal("0"))
        equity = cash + value
        return Balance(currency=quote, cash=cash, equity=equity)

    def validate_credentials(self) -> None:
        """Refuse keys that can withdraw; warn (``self.warnings``) about keys without an IP whitelist."""
        market = self.market_for()
        self._call(market, "futures_account" if market == "futures" else "get_account")
        if market == "futures" and self._call("futures", "futures_get_position_mode").get("dualSidePosition"):
            # Every order would fail with -4061, and a sell would not close a long: refuse at connect time.
            raise BrokerRejected(HEDGE_MODE_REFUSAL, code="hedge_mode")
        if self.testnet:  # the testnets have no /sapi and no withdrawals
            return None
        restrictions = self._call("spot", "get_account_api_permissions")
        if restrictions.get("enableWithdrawals"):
            raise BrokerRejected(WITHDRAW_REFUSAL, code="withdrawals_enabled")
        if market == "futures" and not restrictions.get("enableFutures"):
            raise BrokerRejected("This API key cannot trade futures: tick “Enable Futures” for it in Binance → API "
                                 "Management (keys made before the futures account existed must be recreated).",
                                 code="futures_disabled")
        if market == "spot" and not restrictions.get("enableSpotAndMarginTrading"):
            raise BrokerRejected("This API key cannot trade: tick “Enable Spot & Margin Trading” for it in Binance → "
                                 "API Management.", code="trading_disabled")
        if not restrictions.get("ipRestrict"):
            expiry = restrictions.get("tradingAuthorityExpirationTime")
            when = (f" (on {datetime.fromtimestamp(expiry / 1000, tz=UTC):%Y-%m-%d})" if expiry else "")
            self.warnings.append(
                "This API key has no IP whitelist. Binance removes trading permission from unrestricted keys after "
                f"30 days{when}, and a leaked unrestricted key works from anywhere: restrict it to TradeFlow's "
                "server IP in Binance → API Management.")
        return None
