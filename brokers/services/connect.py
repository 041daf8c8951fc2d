"""Connecting real broker accounts, and changing their options and credentials afterwards.

Zerodha Kite: the customer's own Kite Connect app key and secret are stored (encrypted), then the browser
goes to Kite's login page carrying a signed ``state``; Kite sends it back with a ``request_token`` to
``kite_login_complete``, which trades it for the day's access token. Kite sessions end every morning, so
the account page offers the login again whenever the session is missing or from an earlier day.

Binance: the key is checked against Binance *before* anything is stored (a key that can withdraw is never
saved); warnings from the check (no IP whitelist) are returned for the page to show.

Option keys written here and read by the adapters and the engine: ``product``, ``expiry_rule``, ``proxy``
(Kite); ``market``, ``testnet``, ``leverage``, ``proxy`` (Binance).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core import signing
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.services import audit_record
from brokers import selectors
from brokers.adapters.base import BrokerError, BrokerTransient
from brokers.adapters.binance import BinanceAdapter
from brokers.adapters.kite import kite_login_url, kite_session_exchange
from brokers.models import Broker, BrokerAccount
from brokers.services.accounts import NewKey, account_create

KITE_STATE_SALT = "brokers.kite-login-state"
KITE_STATE_MAX_AGE = 15 * 60  # seconds from leaving TradeFlow to coming back from Kite's login
IST = ZoneInfo("Asia/Kolkata")
KITE_LOGIN_NEEDED = "Log in to Kite to start trading: Kite sessions end every morning."
EXPIRY_RULES = {"nearest_weekly": "Nearest weekly expiry", "nearest_monthly": "Nearest monthly expiry"}
MARKETS = {"spot": "Spot", "futures": "USDⓈ-M futures"}


class ConnectError(Exception):
    """The broker (or our own check) refused: ``message`` says why and what to do; ``field`` is the form field."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class LoginStateInvalid(Exception):
    """The ``state`` Kite handed back was not issued by us, was altered, or is too old."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Connected:
    account: BrokerAccount
    key: NewKey
    warnings: list[str] = field(default_factory=list)


def live_trading_allowed() -> bool:
    return bool(settings.LIVE_TRADING_ENABLED)


def _clean(options: dict) -> dict:
    return {name: value for name, value in options.items() if value is not None and value != ""}


def _plan_allows(owner, broker: str) -> None:
    """The billing plan's broker / accounts-per-broker limits, as a ConnectError the connect pages show."""
    from django.core.exceptions import ValidationError

    from billing.services import limit_check

    try:
        limit_check(user=owner, resource="account", broker=broker)
    except ValidationError as exc:
        raise ConnectError(exc.messages[0]) from exc


# --- Zerodha Kite ---------------------------------------------------------------------------------------------

def _kite_logged_out(account: BrokerAccount) -> None:
    # A paper account trades on simulated fills and does not need the Kite session to do so.
    account.access_token = ""
    if account.mode == BrokerAccount.Mode.LIVE:
        account.status, account.status_message = BrokerAccount.Status.LOGIN_NEEDED, KITE_LOGIN_NEEDED


def kite_account_connect(*, owner, label: str, api_key: str, api_secret: str, mode: str, product: str = "NRML",
                         expiry_rule: str = "nearest_weekly", proxy: str = "") -> Connected:
    """Store a Kite account (not logged in yet); the caller sends the browser to ``kite_login_redirect``."""
    _plan_allows(owner, Broker.KITE)
    account = BrokerAccount(mode=mode)
    _kite_logged_out(account)
    created, key = account_create(
        owner=owner, label=label, broker=Broker.KITE, mode=mode, currency="INR", api_key=api_key,
        api_secret=api_secret, status=account.status, status_message=account.status_message,
        options=_clean({"product": product, "expiry_rule": expiry_rule, "proxy": proxy}))
    return Connected(account=created, key=key)


def kite_login_redirect(*, account: BrokerAccount, user) -> str:
    """Kite's login page for this account, with a signed ``state`` naming the account and the user."""
    state = signing.dumps({"account": account.pk, "user": user.pk}, salt=KITE_STATE_SALT)
    return kite_login_url(account, state=state)


def kite_login_account(*, user, state: str) -> BrokerAccount:
    """The account a returning Kite login belongs to. Raises ``LoginStateInvalid`` for a bad or stale state and
    ``BrokerAccount.DoesNotExist`` when it names an account that is not this user's Kite account."""
    try:
        payload = signing.loads(state, salt=KITE_STATE_SALT, max_age=KITE_STATE_MAX_AGE)
    except signing.SignatureExpired as exc:
        raise LoginStateInvalid(f"This Kite login took longer than {KITE_STATE_MAX_AGE // 60} minutes and has "
                                "expired. Start it again from your account page.") from exc
    except signing.BadSignature as exc:
        raise LoginStateInvalid("This Kite login link was not issued by TradeFlow or was altered, so it was "
                                "ignored. Start the login again from your account page.") from exc
    if not isinstance(payload, dict) or payload.get("user") != user.pk:
        raise BrokerAccount.DoesNotExist("the login was started by another user")
    account = selectors.account_get(user=user, pk=payload.get("account"))
    if account.broker != Broker.KITE:
        raise BrokerAccount.DoesNotExist("not a Kite account")
    return account


def kite_login_complete(*, account: BrokerAccount, params: Mapping[str, str]) -> BrokerAccount:
    """Trade the ``request_token`` of Kite's redirect for the day's access token (stored encrypted)."""
    request_token = params.get("request_token", "")
    if params.get("status", "success") != "success" or not request_token:
        raise ConnectError(f"Kite did not complete the login (status: {params.get('status') or 'none'}). "
                           "Start the login again.")
    try:
        kite_session_exchange(account=account, request_token=request_token)
    except BrokerError as exc:
        raise ConnectError(exc.message) from exc
    account.options = {**account.options, "logged_in_at": timezone.now().isoformat()}
    account.save(update_fields=["options"])
    return account


def kite_login_reason(account: BrokerAccount, *, today: date | None = None) -> str:
    """Why the account page offers "Log in to Kite" (no session, a dead one, one from an earlier day), or ''."""
    if account.broker != Broker.KITE:
        return ""
    session_date = (account.options or {}).get("session_date")
    if not account.access_token and not session_date:
        return "Not logged in to Kite yet."
    if account.status == BrokerAccount.Status.LOGIN_NEEDED or not account.access_token:
        return "Kite no longer accepts the session (sessions end every morning, or you logged out elsewhere)."
    today = today or timezone.localdate(timezone=IST)
    if session_date != today.isoformat():
        return f"The Kite session is from {session_date or 'an earlier day'}; Kite ends sessions every morning."
    return ""


# --- Binance --------------------------------------------------------------------------------------------------

def _binance_error(exc: BrokerError, options: dict) -> ConnectError:
    network = "Binance testnet" if options.get("testnet") else "Binance"
    if exc.code == "-1022":
        return ConnectError("The API secret does not belong to this API key (Binance could not verify the "
                            "signature). Copy the secret again; Binance shows it only when the key is created, so "
                            "if you no longer have it, create a new key.", field="api_secret")
    if exc.code == "-2014":
        return ConnectError("This is not a Binance API key: keys are 64 letters and digits. Copy it again from "
                            "Binance → API Management.", field="api_key")
    if exc.code == "-2015":
        other = "live Binance" if options.get("testnet") else "Binance testnet"
        return ConnectError(f"{network} does not accept this API key: it does not exist there, was deleted, is not "
                            f"allowed from TradeFlow's server IP, or may not trade {MARKETS[options['market']]}. "
                            f"A {other} key works only with the testnet switch "
                            f"{'off' if options.get('testnet') else 'on'}.", field="api_key")
    if exc.code == "withdrawals_enabled":
        return ConnectError(exc.message + " Best practice: a trade-only key (withdrawals disabled) restricted to "
                            "TradeFlow's server IP.", field="api_key")
    if isinstance(exc, BrokerTransient):
        return ConnectError(f"Could not check the key with {network} right now ({exc.message}). Nothing was "
                            "saved; try again in a minute.")
    return ConnectError(f"{network} refused the key: {exc.message}")


def binance_check(account: BrokerAccount) -> list[str]:
    """Validate the (possibly unsaved) account's key with Binance; the warnings to show, or ``ConnectError``."""
    adapter = BinanceAdapter(account)
    try:
        adapter.validate_credentials()
    except BrokerError as exc:
        raise _binance_error(exc, {"market": "spot", **account.options}) from exc
    return list(adapter.warnings)


def binance_account_connect(*, owner, label: str, api_key: str, api_secret: str, mode: str, market: str = "spot",
                            testnet: bool = False, leverage: int | None = None) -> Connected:
    """Check the key with Binance, then store the account. A refused key leaves nothing behind."""
    _plan_allows(owner, Broker.BINANCE)
    options = _clean({"market": market, "testnet": testnet,
                      "leverage": leverage if market == "futures" else None})
    probe = BrokerAccount(owner=owner, label=label, broker=Broker.BINANCE, mode=mode, api_key=api_key,
                          api_secret=api_secret, options=options)
    warnings = binance_check(probe)
    account, key = account_create(owner=owner, label=label, broker=Broker.BINANCE, mode=mode, currency="USDT",
                                  api_key=api_key, api_secret=api_secret, options=options, last_sync=timezone.now())
    return Connected(account=account, key=key, warnings=warnings)


# --- after connecting: options and credentials ----------------------------------------------------------------

def account_options_update(*, account: BrokerAccount, actor, proxy: str = "", clear_proxy: bool = False,
                           **changes) -> list[str]:
    """Save broker options. A blank ``proxy`` keeps the saved one (it may hold a password, so it is never shown
    back). For Binance, a change of network or proxy is checked with the saved key first."""
    before = dict(account.options or {})
    options = {**before, **changes}
    if clear_proxy:
        options.pop("proxy", None)
    elif proxy:
        options["proxy"] = proxy
    options = _clean(options)
    warnings: list[str] = []
    if account.broker == Broker.BINANCE and any(before.get(k) != options.get(k) for k in ("testnet", "proxy")):
        probe = copy.copy(account)
        probe.options = options
        warnings = binance_check(probe)
    account.options = options
    account.save(update_fields=["options"])
    audit_record(user=account.owner, actor=actor, action="account.options_changed", target=str(account),
                 details={"changed": sorted(k for k in set(before) | set(options) if before.get(k) != options.get(k))})
    return warnings


def account_credentials_replace(*, account: BrokerAccount, actor, api_key: str, api_secret: str,
                                testnet: bool | None = None) -> list[str]:
    """Replace the broker key and secret. Kite: the session ends (log in again). Binance: checked first."""
    warnings: list[str] = []
    if account.broker == Broker.BINANCE:
        probe = copy.copy(account)
        probe.api_key, probe.api_secret = api_key, api_secret
        if testnet is not None:
            probe.options = {**account.options, "testnet": testnet}
        warnings = binance_check(probe)
        account.options = probe.options
        account.status, account.status_message, account.last_sync = (
            BrokerAccount.Status.ACTIVE, "", timezone.now())
    elif account.broker == Broker.KITE:
        _kite_logged_out(account)
    else:
        raise ConnectError("Paper accounts have no broker credentials.")
    account.api_key, account.api_secret = api_key, api_secret
    account.save()
    audit_record(user=account.owner, actor=actor, action="account.credentials_replaced", target=str(account))
    return warnings


# --- what the account page shows ------------------------------------------------------------------------------

def masked(value: str) -> str:
    """``••••`` and the last four characters, and only the dots for values too short to hide anything."""
    if not value:
        return ""
    return "••••" + (value[-4:] if len(value) >= 8 else "")


def proxy_display(proxy: str) -> str:
    """The proxy URL with any password replaced by dots."""
    if not proxy:
        return ""
    parts = urlsplit(proxy)
    if parts.password is None:
        return proxy
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:••••@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def account_connection(*, account: BrokerAccount) -> dict:
    """What the account page shows about the broker connection; never a secret, a token or a full key."""
    options = account.options or {}
    return {
        "is_real_broker": account.broker != Broker.PAPER,
        "api_key": masked(account.api_key),
        "has_secret": bool(account.api_secret),
        "kite_login_reason": kite_login_reason(account),
        "session_date": options.get("session_date", ""),
        "logged_in_at": parse_datetime(options.get("logged_in_at") or ""),
        "kite_user_id": options.get("user_id", ""),
        "product": options.get("product", ""),
        "expiry_rule": EXPIRY_RULES.get(options.get("expiry_rule", ""), ""),
        "market": MARKETS.get(options.get("market", ""), ""),
        "futures": options.get("market") == "futures",
        "testnet": bool(options.get("testnet")),
        "leverage": options.get("leverage"),
        "proxy": proxy_display(options.get("proxy", "")),
    }
