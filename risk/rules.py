"""Risk rules: pure functions of (config, counters snapshot, intent, clock) → Decision.

Nothing here touches the database: ``risk.selectors.risk_counters`` builds the snapshot and
``risk.services.decide`` locks, calls ``entry_decide`` and reserves the trade slot. Exits and closing
orders never reach the entry rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Decision:
    allowed: bool
    code: str = ""
    message: str = ""


ALLOW = Decision(True)


def reject(code: str, message: str) -> Decision:
    return Decision(False, code, message)


def is_exit(intent: dict) -> bool:
    return intent.get("action") in ("exit", "close_all")


@dataclass(frozen=True)
class NewsEvent:
    starts_at: datetime
    title: str
    market: str = ""


@dataclass(frozen=True)
class Counters:
    """What the rules need to know about today, for one user (P&L for the account being traded)."""

    pnl_today: Decimal = Decimal("0")  # realized + unrealized, the account's currency; negative is a loss
    trades_today: int = 0  # entries admitted today (in flight or done), the day in the user's timezone
    open_positions: int = 0  # open positions plus admitted entries still in flight
    currency: str = "INR"
    events: Sequence[NewsEvent] = field(default_factory=tuple)  # high-impact events near now


CURRENCY_SIGNS = {"INR": "₹", "USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


def _group(integer: str, indian: bool) -> str:
    if not indian or len(integer) <= 3:
        return f"{int(integer):,}"
    head, tail = integer[:-3], integer[-3:]
    pairs = []
    while head:
        pairs.insert(0, head[-2:])
        head = head[:-2]
    return ",".join(pairs + [tail])


def money(amount: Decimal, currency: str = "", *, sign: bool = True) -> str:
    """``₹2,000``, ``1,25,000`` (Indian grouping for INR), ``$1,250.50``, ``500 USDT``."""
    amount = Decimal(amount)
    negative = amount < 0
    amount = abs(amount).quantize(Decimal("0.01"))
    integer, _, cents = format(amount, "f").partition(".")
    text = _group(integer, indian=currency == "INR") + ("" if cents == "00" else f".{cents}")
    text = ("-" if negative else "") + text
    if not sign or not currency:
        return text
    symbol = CURRENCY_SIGNS.get(currency)
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


def symbols(text: str) -> set[str]:
    return {s.strip().upper() for s in text.replace("\n", ",").split(",") if s.strip()}


def _dec(value) -> Decimal | None:
    try:
        return Decimal(str(value)) if value not in (None, "") else None
    except InvalidOperation:
        return None


def intent_value(intent: dict) -> Decimal | None:
    """qty × price of an entry when the alert carries both (sized later otherwise: not checked here)."""
    qty, price = _dec(intent.get("qty")), _dec(intent.get("price"))
    return qty * price if qty is not None and price is not None else None


def trading_days(text: str) -> set[int]:
    return {int(d) for d in text.replace(" ", "").split(",") if d.isdigit()}


def within_hours(now: datetime, *, start: time, end: time, tz: str, days: Iterable[int]) -> bool:
    """Whether ``now`` falls in the session. A session across midnight (start after end) belongs to the day
    it started on; local time comes from zoneinfo, so daylight saving shifts are followed."""
    local = now.astimezone(ZoneInfo(tz))
    t, days = local.time(), set(days)
    if start == end:
        return local.weekday() in days
    if start < end:
        return start <= t < end and local.weekday() in days
    if t >= start:
        return local.weekday() in days
    return t < end and (local - timedelta(days=1)).weekday() in days


def news_decide(now: datetime, events: Iterable[NewsEvent], *, before: int, after: int) -> Decision:
    for event in events:
        opens, closes = event.starts_at - timedelta(minutes=before), event.starts_at + timedelta(minutes=after)
        if not opens <= now <= closes:
            continue
        seconds = (event.starts_at - now).total_seconds()
        if seconds > 0:
            when = f"in {math.ceil(seconds / 60)} minute{'s' if math.ceil(seconds / 60) != 1 else ''}"
        else:
            ago = math.floor(-seconds / 60)
            when = "now" if ago == 0 else f"{ago} minute{'s' if ago != 1 else ''} ago"
        resume = closes.strftime("%H:%M UTC")
        return reject("news_lockout", f"News lockout: {event.title} {when}. Entries resume at {resume}")
    return ALLOW


def entry_decide(config, counters: Counters, intent: dict, now: datetime) -> Decision:
    """The entry rules of seed 003, in its order. ``config`` is a ``RiskConfig`` (or anything shaped like one)."""
    if not config.enabled:
        return ALLOW
    if config.max_daily_loss is not None and counters.pnl_today <= -config.max_daily_loss:
        return reject("daily_loss_limit", f"Daily loss limit reached: {money(config.max_daily_loss, counters.currency)}"
                      f" (today {money(counters.pnl_today, counters.currency)}). New entries resume tomorrow.")
    if config.trading_hours_enabled and not within_hours(
            now, start=config.trading_hours_start, end=config.trading_hours_end, tz=config.trading_hours_timezone,
            days=trading_days(config.trading_days)):
        return reject("outside_trading_hours", f"Outside trading hours: {config.trading_hours_start:%H:%M}–"
                      f"{config.trading_hours_end:%H:%M} {config.trading_hours_timezone}")
    if config.max_trades_per_day is not None and counters.trades_today >= config.max_trades_per_day:
        return reject("daily_trade_limit", f"Daily trade limit reached: {config.max_trades_per_day} trades")
    if config.max_open_positions is not None and counters.open_positions >= config.max_open_positions:
        return reject("max_open_positions", f"Max open positions: {config.max_open_positions}. "
                      "Close one to open another.")
    decision = instrument_decide(config, intent)
    if not decision.allowed:
        return decision
    value = intent_value(intent)
    if config.max_position_value is not None and value is not None and value > config.max_position_value:
        return reject("max_position_value", f"Position value {money(value, counters.currency, sign=False)} over "
                      f"the limit of {money(config.max_position_value, counters.currency, sign=False)}")
    if config.news_lockout_enabled:
        return news_decide(now, counters.events, before=config.news_minutes_before, after=config.news_minutes_after)
    return ALLOW


def instrument_decide(config, intent: dict) -> Decision:
    names = {str(intent.get("symbol") or "").upper()}
    underlying = (intent.get("option") or {}).get("underlying")
    if underlying:
        names.add(str(underlying).upper())
    names.discard("")
    symbol = str(intent.get("symbol") or underlying or "").upper()
    denied = names & symbols(config.denied_instruments)
    if denied:
        return reject("denied_instrument", f"{sorted(denied)[0]} is on your denied list")
    allowed = symbols(config.allowed_instruments)
    if allowed and not names & allowed:
        return reject("instrument_not_allowed", f"{symbol} is not on your allowed list")
    return ALLOW
