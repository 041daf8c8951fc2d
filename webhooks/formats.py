"""Alert payloads → one normalized intent.

Three formats (DESIGN.md): the options format of seeds 000/001, ``unify.v1`` of seed 003, and the bot
master format of seed 004. TradingView substitutes its placeholders before sending, so numbers may
arrive as strings ("25000"), and keywords in any case ("Entry").

An intent is a JSON-safe dict (Decimals as strings)::

    {"format": "options", "action": "entry"|"exit", "symbol": ..., "option": {...}}
    {"format": "unify.v1", "action": "entry"|"exit", "side": "buy"|"sell", "order_type": "market"|"limit",
     "symbol": ..., "qty": "1.5", "price": "..."|None, "sl": {"mode", "value"}|None, "tp": ...}
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

SL_TP_MODES = ("price", "pct", "rr", "points")
MAX_ID_LENGTH = 100
# What the quantity and price columns hold (24 digits, 8 of them decimals): a bigger or finer number
# would be refused (or silently rounded to 0) when the order is stored, long after the 202.
MAX_NUMBER = Decimal("1e16")
MAX_DECIMAL_PLACES = 8


class PayloadError(Exception):
    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


class _Fields:
    """Collects every problem in a payload, so one answer names them all."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def decimal(self, data: dict, key: str, name: str, *, required: bool = True, positive: bool = True):
        raw = data.get(key)
        if raw is None or raw == "":
            if required:
                self.errors[name] = "is required"
            return None
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str, Decimal)):
            self.errors[name] = f"must be a number, got {type(raw).__name__}"
            return None
        try:
            value = Decimal(str(raw).strip())
        except InvalidOperation:
            self.errors[name] = f"must be a number, got {str(raw)[:40]!r}"
            return None
        if not value.is_finite():
            self.errors[name] = "must be a finite number"
            return None
        if abs(value) >= MAX_NUMBER:
            self.errors[name] = f"must be less than {MAX_NUMBER:f}"
            return None
        if -value.normalize().as_tuple().exponent > MAX_DECIMAL_PLACES:
            self.errors[name] = f"must have at most {MAX_DECIMAL_PLACES} decimal places"
            return None
        if positive and value <= 0:
            self.errors[name] = f"must be greater than 0, got {value}"
            return None
        return value

    def choice(self, data: dict, key: str, name: str, choices: tuple[str, ...], *, required: bool = True):
        raw = data.get(key)
        if raw is None or raw == "":
            if required:
                self.errors[name] = f"is required (one of {', '.join(choices)})"
            return None
        value = str(raw).strip().lower() if isinstance(raw, str) else None
        if value not in choices:
            self.errors[name] = f"must be one of {', '.join(choices)}, got {str(raw)[:40]!r}"
            return None
        return value

    def text(self, data: dict, key: str, name: str, *, required: bool = True, max_length: int = 64):
        raw = data.get(key)
        if raw is None or raw == "":
            if required:
                self.errors[name] = "is required"
            return None
        if not isinstance(raw, (str, int)) or isinstance(raw, bool):
            self.errors[name] = f"must be a string, got {type(raw).__name__}"
            return None
        value = str(raw).strip()
        if len(value) > max_length:
            self.errors[name] = f"must be at most {max_length} characters"
            return None
        return value

    def raise_if_any(self) -> None:
        if self.errors:
            raise PayloadError(self.errors)


def _s(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def detect_format(data: dict) -> str:
    if "version" in data or "intent" in data:
        return "unify.v1"
    if "strike" in data or "signal" in data:
        return "options"
    raise PayloadError({"body": "unknown alert format: expected the options format (signal, strike, type, "
                                "action) or unify.v1 (version, intent)"})


def parse_options(data: dict) -> dict[str, Any]:
    f = _Fields()
    signal = f.text(data, "signal", "signal", max_length=16)
    strike = f.decimal(data, "strike", "strike")
    option_type = f.choice(data, "type", "type", ("ce", "pe"))
    action = f.choice(data, "action", "action", ("entry", "exit"))
    spot = f.decimal(data, "spot_price", "spot_price", required=False)
    underlying = f.text(data, "underlying", "underlying", required=False, max_length=32) or "NIFTY"
    lots = f.decimal(data, "lots", "lots", required=False)
    if lots is not None and lots != lots.to_integral_value():
        f.errors["lots"] = "must be a whole number of lots"
    f.raise_if_any()
    option_type = option_type.upper()
    return {
        "format": "options",
        "action": action,
        "signal": signal,
        "symbol": paper_option_symbol(underlying.upper(), strike, option_type),
        "option": {"underlying": underlying.upper(), "strike": _s(strike), "option_type": option_type,
                   "spot": _s(spot)},
        "lots": int(lots) if lots is not None else None,
    }


def paper_option_symbol(underlying: str, strike: Decimal, option_type: str) -> str:
    """A readable name for a paper option leg; real brokers resolve the exact contract from instruments."""
    return f"{underlying} {strike.normalize():f} {option_type}"


def _sl_tp(f: _Fields, intent: dict, key: str) -> dict | None:
    raw = intent.get(key)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        f.errors[f"intent.{key}"] = 'must be an object like {"mode": "pct", "value": 1.5}'
        return None
    modes = SL_TP_MODES if key == "tp" else ("price", "pct", "points")
    mode = f.choice(raw, "mode", f"intent.{key}.mode", modes)
    value = f.decimal(raw, "value", f"intent.{key}.value")
    return {"mode": mode, "value": _s(value)}


def parse_unify(data: dict, *, account_broker: str) -> dict[str, Any]:
    f = _Fields()
    version = data.get("version")
    if version != "unify.v1":
        f.errors["version"] = f"must be 'unify.v1', got {str(version)[:40]!r}"
    intent = data.get("intent")
    if not isinstance(intent, dict):
        f.errors["intent"] = "must be an object with side, symbol, qty"
        f.raise_if_any()
    broker = f.text(intent, "broker", "intent.broker", required=False, max_length=16)
    if broker and broker.lower() != account_broker and account_broker != "paper":
        f.errors["intent.broker"] = f"is {broker!r} but this API key belongs to a {account_broker} account"
    side = f.choice(intent, "side", "intent.side", ("buy", "sell", "close"))
    order_type = f.choice(intent, "type", "intent.type", ("market", "limit"), required=False) or "market"
    symbol = f.text(intent, "symbol", "intent.symbol", max_length=64)
    qty = f.decimal(intent, "qty", "intent.qty", required=side in ("buy", "sell"))
    price = f.decimal(intent, "price", "intent.price", required=order_type == "limit")
    sl = _sl_tp(f, intent, "sl")
    tp = _sl_tp(f, intent, "tp")
    if tp and tp["mode"] == "rr" and not sl:
        f.errors["intent.tp"] = "mode 'rr' needs a stop loss (intent.sl) to measure the risk from"
    f.raise_if_any()
    return {
        "format": "unify.v1",
        "action": "exit" if side == "close" else "entry",
        "side": side,
        "order_type": order_type,
        "symbol": symbol.upper(),
        "qty": _s(qty),
        "price": _s(price),
        "sl": sl,
        "tp": tp,
    }


def parse_account_payload(data: Any, *, account_broker: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PayloadError({"body": f"must be a JSON object, got {type(data).__name__}"})
    fmt = detect_format(data)
    return parse_options(data) if fmt == "options" else parse_unify(data, account_broker=account_broker)


def client_id_of(data: Any) -> str:
    """The alert's own idempotency id (``id``, e.g. ``{{strategy.order.id}}-{{timenow}}``), if any."""
    if not isinstance(data, dict) or data.get("id") in (None, ""):
        return ""
    raw = data["id"]
    if isinstance(raw, bool) or not isinstance(raw, (str, int, Decimal)):
        raise PayloadError({"id": "must be a string or a number"})
    value = str(raw).strip()
    if len(value) > MAX_ID_LENGTH:
        raise PayloadError({"id": f"must be at most {MAX_ID_LENGTH} characters"})
    return value


SECRET_FIELDS = ("api_key", "secret", "token", "password")


def redact_payload(data: Any) -> Any:
    """The payload to store: secret-bearing fields replaced, so logs never hold a key."""
    if isinstance(data, dict):
        return {k: ("[redacted]" if k.lower() in SECRET_FIELDS else redact_payload(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_payload(v) for v in data]
    return data


BOT_ACTIONS = ("buy", "sell", "close", "close_all")


def bot_symbol(raw: str) -> str:
    """TradingView's ``{{ticker}}`` as the broker names it: no exchange prefix, no perpetual ``.P`` suffix."""
    symbol = raw.strip().upper().rsplit(":", 1)[-1]
    return symbol[:-2] if symbol.endswith(".P") else symbol


def parse_bot(data: Any, *, market_type: str) -> dict[str, Any]:
    """The bot master format (seed 004): ``{"ticker", "action": buy|sell|close|close_all, "price"}``.

    ``buy``/``sell`` open (sized per subscriber); on a spot bot ``sell`` closes the long, spot having no shorts.
    ``close`` closes the bot's position in the ticker, ``close_all`` every position the bot opened. Options bots
    (seeds 000/001 strategy) also carry ``strike`` and ``type``: an entry sells that strike with its hedge.
    """
    if not isinstance(data, dict):
        raise PayloadError({"body": f"must be a JSON object, got {type(data).__name__}"})
    f = _Fields()
    ticker = f.text(data, "ticker", "ticker", max_length=64)
    action = f.choice(data, "action", "action", BOT_ACTIONS)
    price = f.decimal(data, "price", "price", required=False)
    option = None
    if market_type == "options" and action != "close_all":
        strike = f.decimal(data, "strike", "strike")
        option_type = f.choice(data, "type", "type", ("ce", "pe"))
        spot = f.decimal(data, "spot_price", "spot_price", required=False) or price
        if strike is not None and option_type:
            option = {"underlying": bot_symbol(ticker or "NIFTY"), "strike": _s(strike),
                      "option_type": option_type.upper(), "spot": _s(spot)}
    f.raise_if_any()
    symbol = bot_symbol(ticker)
    if not symbol:
        raise PayloadError({"ticker": "is required"})
    if action == "close_all":
        kind, side = "close_all", None
    elif action == "close" or (action == "sell" and market_type == "spot"):
        kind, side = "exit", None
    else:
        kind, side = "entry", action
    intent: dict[str, Any] = {"format": "bot", "action": kind, "side": side, "symbol": symbol, "price": _s(price),
                              "market": market_type}
    if option:
        intent |= {"symbol": paper_option_symbol(option["underlying"], Decimal(option["strike"]),
                                                 option["option_type"]), "option": option}
    return intent
