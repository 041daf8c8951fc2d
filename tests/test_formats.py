"""Alert payload parsing: the options format, unify.v1, every invalid field named, redaction."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from webhooks.formats import (
    PayloadError,
    client_id_of,
    detect_format,
    parse_account_payload,
    parse_options,
    parse_unify,
    redact_payload,
)
from webhooks.services import WebhookError, parse_json


def options(**overrides) -> dict:
    body = {"signal": "S1", "strike": 25000, "type": "PE", "action": "ENTRY", "spot_price": 24481}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def unify(**intent) -> dict:
    base = {"side": "buy", "type": "market", "symbol": "btcusdt", "qty": "0.5"}
    base.update(intent)
    return {"version": "unify.v1", "intent": {k: v for k, v in base.items() if v is not ...}}


def errors_of(fn, *args, **kwargs) -> dict[str, str]:
    with pytest.raises(PayloadError) as info:
        fn(*args, **kwargs)
    return info.value.fields


# --- options format (seeds 000/001) -------------------------------------------------------------------


def test_options_entry_normalizes_to_an_intent():
    intent = parse_options(options())
    assert intent == {
        "format": "options",
        "action": "entry",
        "signal": "S1",
        "symbol": "NIFTY 25000 PE",
        "option": {"underlying": "NIFTY", "strike": "25000", "option_type": "PE", "spot": "24481"},
        "lots": None,
    }


@pytest.mark.parametrize("action, expected", [
    ("ENTRY", "entry"), ("Entry", "entry"), ("entry", "entry"), (" eNtRy ", "entry"),
    ("EXIT", "exit"), ("Exit", "exit"), ("exit", "exit"),
])
def test_options_action_in_any_case(action, expected):
    assert parse_options(options(action=action))["action"] == expected


@pytest.mark.parametrize("option_type", ["CE", "ce", "Ce", "PE", "pe"])
def test_options_type_ce_pe_in_any_case_is_upper_in_the_symbol(option_type):
    intent = parse_options(options(type=option_type))
    assert intent["option"]["option_type"] == option_type.upper()
    assert intent["symbol"] == f"NIFTY 25000 {option_type.upper()}"


def test_options_numbers_sent_as_strings():
    intent = parse_options(options(strike="25000", spot_price=" 24481.5 ", lots="3"))
    assert intent["option"]["strike"] == "25000"
    assert intent["option"]["spot"] == "24481.5"
    assert intent["lots"] == 3


def test_options_spot_price_is_optional():
    intent = parse_options(options(spot_price=...))
    assert intent["option"]["spot"] is None
    assert parse_options(options(spot_price=""))["option"]["spot"] is None


def test_options_lots_default_to_user_settings_and_must_be_whole():
    assert parse_options(options())["lots"] is None  # planning uses the user's default lots
    assert parse_options(options(lots=2))["lots"] == 2
    assert errors_of(parse_options, options(lots=1.5)) == {"lots": "must be a whole number of lots"}
    assert "lots" in errors_of(parse_options, options(lots=0))


def test_options_underlying_other_than_nifty():
    intent = parse_options(options(underlying="banknifty", strike="51000.0"))
    assert intent["symbol"] == "BANKNIFTY 51000 PE"
    assert intent["option"]["underlying"] == "BANKNIFTY"


def test_options_every_invalid_field_is_named():
    fields = errors_of(parse_options, {"signal": "S" * 17, "strike": "abc", "type": "XX", "action": "BUY",
                                       "spot_price": "-1", "lots": "two"})
    assert set(fields) == {"signal", "strike", "type", "action", "spot_price", "lots"}
    assert "16" in fields["signal"]
    assert "'abc'" in fields["strike"]
    assert "ce, pe" in fields["type"]
    assert "entry, exit" in fields["action"]
    assert "greater than 0" in fields["spot_price"]


def test_options_missing_required_fields_are_named():
    fields = errors_of(parse_options, {"signal": "S1"})
    assert fields == {"strike": "is required", "type": "is required (one of ce, pe)",
                      "action": "is required (one of entry, exit)"}


# --- unify.v1 (seed 003) ------------------------------------------------------------------------------


def test_unify_market_buy_normalizes_to_an_intent():
    intent = parse_unify(unify(price="50000.5", sl={"mode": "pct", "value": 1}, tp={"mode": "rr", "value": "2"}),
                         account_broker="paper")
    assert intent == {
        "format": "unify.v1", "action": "entry", "side": "buy", "order_type": "market", "symbol": "BTCUSDT",
        "qty": "0.5", "price": "50000.5", "sl": {"mode": "pct", "value": "1"}, "tp": {"mode": "rr", "value": "2"},
    }


@pytest.mark.parametrize("side, action", [("buy", "entry"), ("SELL", "entry"), ("Close", "exit")])
def test_unify_sides(side, action):
    intent = parse_unify(unify(side=side), account_broker="paper")
    assert (intent["side"], intent["action"]) == (side.lower(), action)


def test_unify_close_needs_no_qty_but_buy_and_sell_do():
    assert parse_unify(unify(side="close", qty=...), account_broker="paper")["qty"] is None
    assert errors_of(parse_unify, unify(side="buy", qty=...), account_broker="paper") == {"intent.qty": "is required"}
    assert errors_of(parse_unify, unify(side="sell", qty=""), account_broker="paper") == {"intent.qty": "is required"}


def test_unify_type_defaults_to_market():
    assert parse_unify(unify(type=...), account_broker="paper")["order_type"] == "market"


def test_unify_limit_needs_a_price():
    assert errors_of(parse_unify, unify(type="limit"), account_broker="paper") == {"intent.price": "is required"}
    intent = parse_unify(unify(type="LIMIT", price="49000"), account_broker="paper")
    assert (intent["order_type"], intent["price"]) == ("limit", "49000")


def test_unify_market_price_is_optional():
    assert parse_unify(unify(), account_broker="paper")["price"] is None


@pytest.mark.parametrize("mode", ["price", "pct", "points"])
def test_unify_sl_modes(mode):
    intent = parse_unify(unify(sl={"mode": mode.upper(), "value": "1.5"}), account_broker="paper")
    assert intent["sl"] == {"mode": mode, "value": "1.5"}


@pytest.mark.parametrize("mode", ["price", "pct", "points", "rr"])
def test_unify_tp_modes(mode):
    intent = parse_unify(unify(sl={"mode": "points", "value": 10}, tp={"mode": mode, "value": 3}),
                         account_broker="paper")
    assert intent["tp"] == {"mode": mode, "value": "3"}


def test_unify_rr_take_profit_needs_a_stop_loss():
    fields = errors_of(parse_unify, unify(tp={"mode": "rr", "value": 2}), account_broker="paper")
    assert list(fields) == ["intent.tp"]
    assert "stop loss" in fields["intent.tp"]


def test_unify_rr_is_not_a_stop_loss_mode():
    fields = errors_of(parse_unify, unify(sl={"mode": "rr", "value": 2}), account_broker="paper")
    assert fields == {"intent.sl.mode": "must be one of price, pct, points, got 'rr'"}


def test_unify_sl_tp_shape_errors_are_named():
    fields = errors_of(parse_unify, unify(sl=5, tp={"mode": "moon", "value": "-1"}), account_broker="paper")
    assert set(fields) == {"intent.sl", "intent.tp.mode", "intent.tp.value"}
    assert '"mode"' in fields["intent.sl"]


@pytest.mark.parametrize("account_broker, broker, ok", [
    ("paper", "binance", True),  # a paper account simulates any broker's alerts
    ("paper", "kite", True),
    ("kite", "kite", True),
    ("kite", "KITE", True),
    ("binance", "Binance", True),
    ("kite", "binance", False),
    ("binance", "kite", False),
])
def test_unify_broker_must_match_the_account(account_broker, broker, ok):
    body = unify(broker=broker)
    if ok:
        assert parse_unify(body, account_broker=account_broker)["symbol"] == "BTCUSDT"
    else:
        fields = errors_of(parse_unify, body, account_broker=account_broker)
        assert list(fields) == ["intent.broker"]
        assert account_broker in fields["intent.broker"] and broker in fields["intent.broker"]


def test_unify_version_and_intent_are_checked():
    assert errors_of(parse_unify, {"version": "unify.v2", "intent": unify()["intent"]},
                     account_broker="paper") == {"version": "must be 'unify.v1', got 'unify.v2'"}
    fields = errors_of(parse_unify, {"version": "unify.v1", "intent": "buy"}, account_broker="paper")
    assert list(fields) == ["intent"]
    fields = errors_of(parse_unify, {"intent": []}, account_broker="paper")
    assert set(fields) == {"version", "intent"}


def test_unify_every_invalid_field_is_named_at_once():
    body = {"version": "unify.v1", "intent": {
        "side": "hold", "type": "stop", "symbol": ["X"], "qty": "lots", "price": "-3",
        "sl": {"mode": "pct"}, "tp": {"value": 1}}}
    fields = errors_of(parse_unify, body, account_broker="paper")
    assert set(fields) == {"intent.side", "intent.type", "intent.symbol", "intent.qty", "intent.price",
                           "intent.sl.value", "intent.tp.mode"}
    # qty is only required for buy/sell: with an unknown side a missing qty is not an extra complaint
    del body["intent"]["qty"]
    assert "intent.qty" not in errors_of(parse_unify, body, account_broker="paper")


def test_unify_symbol_too_long():
    assert errors_of(parse_unify, unify(symbol="X" * 65), account_broker="paper") == {
        "intent.symbol": "must be at most 64 characters"}


# --- numbers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    (10, "10"), ("10", "10"), (" 10 ", "10"), ("0.25", "0.25"), (Decimal("1.5"), "1.5"), ("1e3", "1E+3"),
    (0.1, "0.1"),
])
def test_numbers_as_numbers_or_strings(raw, expected):
    assert parse_unify(unify(qty=raw), account_broker="paper")["qty"] == expected


@pytest.mark.parametrize("raw, message", [
    (True, "must be a number, got bool"),
    (False, "must be a number, got bool"),
    ([1], "must be a number, got list"),
    ({"v": 1}, "must be a number, got dict"),
    ("ten", "must be a number, got 'ten'"),
    ("NaN", "must be a finite number"),
    ("nan", "must be a finite number"),
    ("Infinity", "must be a finite number"),
    ("-Infinity", "must be a finite number"),
    (Decimal("NaN"), "must be a finite number"),
    (float("inf"), "must be a finite number"),
    ("0", "must be greater than 0, got 0"),
    ("-2", "must be greater than 0, got -2"),
    ("1e16", "must be less than 10000000000000000"),
    ("0.000000001", "must have at most 8 decimal places"),
])
def test_bad_numbers_are_rejected(raw, message):
    assert errors_of(parse_unify, unify(qty=raw), account_broker="paper") == {"intent.qty": message}


def test_json_nan_and_infinity_literals_reach_the_field_check():
    # TradingView writes NaN for a missing plot value; the body is still JSON enough to name the field.
    data = parse_json(b'{"version": "unify.v1", "intent": {"side": "buy", "symbol": "X", "qty": NaN, '
                      b'"price": Infinity}}')
    fields = errors_of(parse_account_payload, data, account_broker="paper")
    assert fields == {"intent.qty": "must be a finite number", "intent.price": "must be a finite number"}


def test_json_floats_are_parsed_exactly():
    data = parse_json(b'{"version": "unify.v1", "intent": {"side": "buy", "symbol": "X", "qty": 0.1, "price": 265.40}}')
    intent = parse_account_payload(data, account_broker="paper")
    assert (intent["qty"], intent["price"]) == ("0.1", "265.40")


@pytest.mark.parametrize("body, where", [
    (b'{"signal": "S1",\n "strike": }', "line 2 column"),
    (b"{'signal': 'S1'}", "line 1 column 2"),
])
def test_malformed_json_says_where(body, where):
    with pytest.raises(WebhookError) as info:
        parse_json(body)
    assert info.value.status == 400
    assert where in info.value.message


@pytest.mark.parametrize("body", [
    b"", b"   \n", b"\xff\xfe{", b'{"a": ' + b"1" * 5000 + b"}", b"[" * 5000 + b"]" * 5000,
])
def test_unusable_bodies_are_400(body):
    with pytest.raises(WebhookError) as info:
        parse_json(body)
    assert (info.value.status, info.value.code) == (400, "malformed_json")


def test_utf8_bom_is_accepted():
    assert parse_json("\ufeff{\"signal\": \"S1\"}".encode()) == {"signal": "S1"}


# --- non-object bodies and format detection --------------------------------------------------------


@pytest.mark.parametrize("data, kind", [([], "list"), ("buy", "str"), (42, "int"), (None, "NoneType"),
                                        (True, "bool")])
def test_non_object_bodies_are_rejected(data, kind):
    assert errors_of(parse_account_payload, data, account_broker="paper") == {
        "body": f"must be a JSON object, got {kind}"}


def test_unknown_format_is_named():
    fields = errors_of(parse_account_payload, {"ticker": "BTCUSDT", "action": "buy"}, account_broker="paper")
    assert list(fields) == ["body"]
    assert "unknown alert format" in fields["body"]


def test_format_detection():
    assert detect_format({"version": "unify.v1"}) == "unify.v1"
    assert detect_format({"intent": {}}) == "unify.v1"
    assert detect_format({"strike": 1}) == "options"
    assert detect_format({"signal": "S1"}) == "options"
    assert parse_account_payload(options(), account_broker="paper")["format"] == "options"
    assert parse_account_payload(unify(), account_broker="paper")["format"] == "unify.v1"


# --- the alert's own id ----------------------------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    ({}, ""), ({"id": None}, ""), ({"id": ""}, ""), ({"id": " abc-1 "}, "abc-1"), ({"id": 17}, "17"),
    ({"id": Decimal("1.5")}, "1.5"), ({"id": "x" * 100}, "x" * 100), ([], ""),
])
def test_client_id(data, expected):
    assert client_id_of(data) == expected


@pytest.mark.parametrize("raw, message", [
    (True, "must be a string or a number"), ({"a": 1}, "must be a string or a number"),
    (["a"], "must be a string or a number"), ("x" * 101, "must be at most 100 characters"),
])
def test_bad_client_id(raw, message):
    assert errors_of(client_id_of, {"id": raw}) == {"id": message}


# --- redaction -------------------------------------------------------------------------------------


def test_redact_payload_replaces_secret_fields_at_any_depth():
    data = {"api_key": "tf_secret", "Secret": "s", "intent": {"TOKEN": "t", "symbol": "X",
                                                               "legs": [{"password": "p", "qty": 1}]},
            "note": "keep"}
    redacted = redact_payload(data)
    assert redacted == {
        "api_key": "[redacted]", "Secret": "[redacted]", "note": "keep",
        "intent": {"TOKEN": "[redacted]", "symbol": "X", "legs": [{"password": "[redacted]", "qty": 1}]},
    }
    assert "tf_secret" not in json.dumps(redacted)
    assert data["api_key"] == "tf_secret"  # the caller's data is not mutated


@pytest.mark.parametrize("data", [None, 1, "api_key", [1, "a"]])
def test_redact_payload_leaves_non_secret_values(data):
    assert redact_payload(data) == data
