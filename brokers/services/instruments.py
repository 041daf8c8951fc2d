"""Kite's instruments list in our Instrument table, option contract resolution and freeze splitting.

Kite regenerates its instruments CSV every morning; lot sizes, tick sizes, expiries and even symbol
formats change over time (NIFTY's lot size went to 75 in late 2024 and to 65 for 2026 expiries). So a
contract is always *looked up* in today's list, never spelled from its parts, and its lot size is read
from the same row.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max
from django.db.models.functions import ExtractMonth, ExtractYear
from django.utils import timezone

from brokers.models import Broker, BrokerAccount, Instrument

log = logging.getLogger(__name__)
IST = ZoneInfo("Asia/Kolkata")
# Kite publishes the day's list early in the morning (India time); a sync from then on counts as today's.
KITE_LIST_READY = time(8, 0)
SYNC_ATTEMPTS = 5  # accounts tried per run before giving up until the next run
OPTION_TYPES = ("CE", "PE")
MAX_SLICES = 10
# Exchange quantity freeze limits (units, not lots) for index derivatives, from NSE's circular
# effective 2025-11-03. NSE revises these every few months and the instruments CSV does not carry
# them: override with the KITE_FREEZE_QTY setting when a new circular comes out.
DEFAULT_FREEZE_QTY = {"NIFTY": 1800, "BANKNIFTY": 600, "FINNIFTY": 1800, "MIDCPNIFTY": 2800, "NIFTYNXT50": 600}
SYNC_FIELDS = ["name", "instrument_token", "instrument_type", "segment", "expiry", "strike", "tick_size", "lot_size",
               "freeze_qty"]


class InstrumentNotFound(LookupError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class FreezeSplitError(ValueError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class SyncResult:
    rows: dict[str, int] = field(default_factory=dict)  # per exchange, as downloaded
    deleted: int = 0


def ist_today() -> date:
    return datetime.now(IST).date()


def freeze_limits() -> dict[str, int]:
    return {**DEFAULT_FREEZE_QTY, **getattr(settings, "KITE_FREEZE_QTY", {})}


def _dec(value) -> Decimal:
    # The SDK parses numbers as floats; str() gives back the CSV's short decimal form (0.05, not 0.050000000000000003).
    return Decimal(str(value))


def _instrument(row: dict, freeze: dict[str, int]) -> Instrument:
    expiry = row.get("expiry") or None
    if isinstance(expiry, str):
        expiry = date.fromisoformat(expiry)
    strike = _dec(row.get("strike") or 0)
    derivative = row.get("instrument_type") in ("CE", "PE", "FUT")
    return Instrument(
        broker=Broker.KITE, exchange=row["exchange"], tradingsymbol=row["tradingsymbol"], name=row.get("name") or "",
        instrument_token=int(row["instrument_token"]), instrument_type=row.get("instrument_type") or "",
        segment=row.get("segment") or "", expiry=expiry, strike=strike if strike else None,
        tick_size=_dec(row.get("tick_size") or "0.05"), lot_size=_dec(row.get("lot_size") or 1) or Decimal(1),
        freeze_qty=Decimal(freeze[row["name"]]) if derivative and row.get("name") in freeze else None,
    )


def instruments_sync_kite(*, adapter_or_client, exchanges=("NFO", "NSE"), today: date | None = None,
                          batch_size: int = 2000) -> SyncResult:
    """Download today's instruments of ``exchanges`` and make our table match them.

    ``adapter_or_client`` is anything with ``instruments(exchange) -> list[dict]`` in the shape of the
    SDK's parsed CSV: a ``KiteAdapter`` (errors translated) or a ``kiteconnect.KiteConnect``. Rows are
    upserted; expired contracts and contracts no longer listed are removed. An exchange whose download
    is empty is left untouched (a failed download must not wipe the table).
    """
    today = today or ist_today()
    freeze = freeze_limits()
    result = SyncResult()
    for exchange in exchanges:
        rows = adapter_or_client.instruments(exchange)
        result.rows[exchange] = len(rows)
        if not rows:
            continue
        objs = [_instrument(row, freeze) for row in rows if row.get("exchange", exchange) == exchange]
        objs = [obj for obj in objs if obj.expiry is None or obj.expiry >= today]
        listed = {obj.tradingsymbol for obj in objs}
        with transaction.atomic():
            Instrument.objects.bulk_create(
                objs, batch_size=batch_size, update_conflicts=True,
                unique_fields=["broker", "exchange", "tradingsymbol"], update_fields=[*SYNC_FIELDS, "updated_at"],
            )
            stale = Instrument.objects.filter(broker=Broker.KITE, exchange=exchange)
            gone = [pk for pk, symbol in stale.values_list("pk", "tradingsymbol") if symbol not in listed]
            for start in range(0, len(gone), 500):
                result.deleted += Instrument.objects.filter(pk__in=gone[start:start + 500]).delete()[0]
    return result


def instruments_sync_due(*, now: datetime | None = None) -> bool:
    """Whether today's Kite list is published and not yet in our table (one successful sync a day)."""
    now = (now or timezone.now()).astimezone(IST)
    ready = datetime.combine(now.date(), KITE_LIST_READY, tzinfo=IST)
    if now < ready:
        return False
    return not Instrument.objects.filter(broker=Broker.KITE, exchange="NFO", updated_at__gte=ready).exists()


def instruments_sync_daily(*, force: bool = False) -> SyncResult | None:
    """Today's Kite instruments, through any Kite account with a live session (Celery beat runs this often;
    it syncs once a day, as soon as a session exists). The list is the same for every customer, so any valid
    session will do: most recent logins first. An account whose token Kite refuses is marked "login needed"
    (it could not trade either) and the next is tried. Returns None when nothing was synced."""
    from brokers.adapters.base import BrokerAuthError, BrokerError
    from brokers.adapters.kite import KiteAdapter

    if not force and not instruments_sync_due():
        return None
    accounts = (BrokerAccount.objects.filter(broker=Broker.KITE, enabled=True, status=BrokerAccount.Status.ACTIVE)
                .order_by(F("last_sync").desc(nulls_last=True), "-pk"))
    tried = 0
    for account in accounts.iterator():
        if not (account.api_key and account.access_token):  # encrypted columns: checked after decryption
            continue
        tried += 1
        try:
            result = instruments_sync_kite(adapter_or_client=KiteAdapter(account))
        except BrokerAuthError as exc:
            BrokerAccount.objects.filter(pk=account.pk).update(
                status=BrokerAccount.Status.LOGIN_NEEDED, status_message=f"Broker login needed: {exc.message}"[:300])
            log.info("Kite instruments sync: %s has no live session (%s)", account, exc.message)
        except BrokerError as exc:  # e.g. that account's proxy is down: another account may get through
            log.warning("Kite instruments sync through %s failed: %s", account, exc.message)
        else:
            log.info("Kite instruments synced through %s: %s rows, %s removed", account, result.rows, result.deleted)
            return result
        if tried >= SYNC_ATTEMPTS:
            break
    log.warning("Kite instruments not synced: no Kite account with a live session (%d tried); next run tries again",
                tried)
    return None


def _target_expiry(expiries: list[date], *, expiry_rule: str) -> date | None:
    if not expiries:
        return None
    if expiry_rule == "nearest_weekly":
        return min(expiries)
    if expiry_rule == "nearest_monthly":
        # The monthly contract is the month's last expiry; monthlies are listed months ahead, so the last
        # listed expiry of a month is always its monthly one.
        by_month: dict[tuple[int, int], date] = defaultdict(lambda: date.min)
        for expiry in expiries:
            by_month[(expiry.year, expiry.month)] = max(by_month[(expiry.year, expiry.month)], expiry)
        return min(by_month.values())
    raise ValueError(f"Unknown expiry rule {expiry_rule!r}: use nearest_weekly or nearest_monthly")


_memo: ContextVar[dict | None] = ContextVar("option_resolve_memo", default=None)


@contextmanager
def resolve_memo():
    """Within this block, ``option_resolve`` reads each expiry and each contract once: a batch of options entries
    asks for the same expiry (and often the same contracts) again and again. Scoped to the block, so nothing
    outlives it: the next batch reads the table again, and sees a sync that ran in between."""
    token = _memo.set({})
    try:
        yield
    finally:
        _memo.reset(token)


def _memoized(key: tuple, read):
    memo = _memo.get()
    if memo is None:
        return read()
    if key not in memo:
        memo[key] = read()
    return memo[key]


def option_resolve(*, underlying: str, strike, option_type: str, on_date: date,
                   expiry_rule: str = "nearest_weekly", min_days_to_expiry: int = 0,
                   exchanges=("NFO", "BFO")) -> Instrument:
    """The listed option contract for (underlying, strike, CE/PE) under the expiry rule on ``on_date``.

    The expiry is chosen among the underlying's listed option expiries on or after ``on_date`` (plus
    ``min_days_to_expiry``, to roll before expiry day): its weeklies for ``nearest_weekly``, its month-end
    contracts for ``nearest_monthly``. The strike must be listed in that expiry; a different expiry is
    never substituted silently. Inside ``resolve_memo`` each expiry and contract is read once.
    """
    option_type = option_type.upper()
    if option_type not in OPTION_TYPES:
        raise InstrumentNotFound(f"Option type must be CE or PE, not {option_type!r}")
    strike = Decimal(str(strike))
    from_date = date.fromordinal(on_date.toordinal() + min_days_to_expiry)
    exchanges = tuple(exchanges)
    base = Instrument.objects.filter(broker=Broker.KITE, exchange__in=exchanges, name=underlying.upper(),
                                     instrument_type__in=OPTION_TYPES, expiry__gte=from_date)

    def listed_expiries() -> list[date]:
        if expiry_rule == "nearest_monthly":
            # One expiry per month is enough to pick from: the month's last.
            return list(
                base.annotate(y=ExtractYear("expiry"), m=ExtractMonth("expiry")).values("y", "m")
                .annotate(last=Max("expiry")).values_list("last", flat=True)
            )
        return list(base.order_by("expiry").values_list("expiry", flat=True).distinct()[:1])

    expiries = _memoized(("expiries", underlying.upper(), exchanges, from_date, expiry_rule), listed_expiries)
    expiry = _target_expiry(expiries, expiry_rule=expiry_rule)
    if expiry is None:
        raise InstrumentNotFound(
            f"No {underlying} options expiring on or after {from_date} in the Kite instruments list: "
            "run the instruments sync, or check the underlying's name."
        )
    contract = _memoized(
        ("contract", underlying.upper(), exchanges, expiry, strike, option_type),
        lambda: base.filter(expiry=expiry, strike=strike, instrument_type=option_type).first())
    if contract is None:
        raise InstrumentNotFound(
            f"{underlying} {strike.normalize():f} {option_type} is not listed for the {expiry} expiry: "
            "check the strike (it must be one the exchange lists)."
        )
    return contract


def freeze_split(qty, lot_size, freeze_qty) -> list[int]:
    """Split ``qty`` into exchange-acceptable orders: each a multiple of the lot size and at most the
    freeze quantity: full slices of the largest whole-lot size under the freeze, then the remainder;
    at most 10 slices (the April 2026 algo rules cap slicing at 10), else ``FreezeSplitError``.
    """
    qty, lot, freeze = int(qty), int(lot_size), int(freeze_qty) if freeze_qty else 0
    if qty <= 0 or lot <= 0:
        raise FreezeSplitError(f"Cannot split a quantity of {qty} with lot size {lot}")
    if qty % lot:
        raise FreezeSplitError(f"Quantity {qty} is not a multiple of the lot size {lot}")
    if not freeze or qty <= freeze:
        return [qty]
    per_slice = (freeze // lot) * lot
    if per_slice == 0:
        raise FreezeSplitError(f"Freeze quantity {freeze} is smaller than one lot ({lot})")
    full, rest = divmod(qty, per_slice)
    slices = [per_slice] * full + ([rest] if rest else [])
    if len(slices) > MAX_SLICES:
        raise FreezeSplitError(
            f"Quantity {qty} needs {len(slices)} orders of at most {per_slice} (freeze limit {freeze}); "
            f"the limit is {MAX_SLICES} orders per signal: reduce the lots to at most {per_slice * MAX_SLICES // lot}."
        )
    return slices
