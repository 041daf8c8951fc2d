"""The stop watcher: closes open positions whose stop loss or take profit the market has reached.

Celery beat runs ``stops_watch`` every ``STOP_WATCH_SECONDS``. Per account, one ``last_prices`` call fetches every
price it needs (the positions' symbols and, for option main legs, the underlying's spot); positions and quotes
are marked with them. Then, per position:

* a price stop (``Position.stop_loss`` / ``take_profit``) that the last price has reached closes the position;
* an option main leg with ``meta["spot_stop"]`` (seeds 000/001: "stop loss at the strike level") is closed when
  the underlying's spot reaches the strike — a short PE when spot falls to or below it, a short CE when spot
  rises to or above it — main leg first, then its hedge, exactly like an EXIT signal. The spot is the index
  quote on Kite (``INDEX_SYMBOLS``) and the paper quote of the underlying (``"NIFTY"``) on paper;
* live Binance positions are never closed here: their stops sit at Binance as algo orders, and the exchange
  closes them. The watcher reconciles instead: a position Binance no longer holds is booked closed at the last
  price, with the reason "Closed at broker (stop/target)".

Closes go through the engine (``execution_create_close``), which keeps at most one close per position in flight;
a close that failed is not retried for ``STOP_RETRY_SECONDS``, so a refusing broker is not hammered every tick.
Accounts that could not trade anyway (disabled, login needed, live while ``LIVE_TRADING_ENABLED`` is off) are
skipped: their closes would only be rejected, over and over.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from brokers.adapters import get_adapter
from brokers.adapters.base import BrokerAdapter, BrokerAuthError, BrokerError
from brokers.models import Broker, BrokerAccount, Execution, Position
from brokers.services.execution import close_in_flight, execution_create_close
from brokers.services.positions import position_apply_fill

log = logging.getLogger(__name__)

# The index each option underlying is priced against, as Kite's quote API names it.
INDEX_SYMBOLS = {"NIFTY": "NSE:NIFTY 50", "BANKNIFTY": "NSE:NIFTY BANK", "FINNIFTY": "NSE:NIFTY FIN SERVICE"}
# A broker holding less than this share of our quantity holds dust (fees paid in the coin), not the position.
DUST = Decimal("0.01")
WATCH_TRIGGERS = ("stop_loss", "take_profit", "spot_stop")


# --- pure decisions --------------------------------------------------------------------------------------------

def stop_triggered(position_side: str, kind: str, level: Decimal, price: Decimal) -> bool:
    """Whether ``price`` has reached a ``"stop_loss"`` or ``"take_profit"`` level of a long or short position.

    A long's stop is below the market and its target above; a short's the other way round. Touching the level
    counts (a stop at 99 is hit by a trade at 99).
    """
    if kind not in ("stop_loss", "take_profit"):
        raise ValueError(f"unknown stop kind {kind!r}")
    falls_to_it = (position_side == Position.Side.LONG) == (kind == "stop_loss")
    return price <= level if falls_to_it else price >= level


def spot_stop_triggered(option_type: str, strike: Decimal, spot: Decimal) -> bool:
    """Seeds 000/001 for a *short* option: a PE is stopped when spot falls to/below the strike (it loses as the
    market falls, like a long), a CE when spot rises to/above it (it loses as the market rises, like a short)."""
    side = {"PE": Position.Side.LONG, "CE": Position.Side.SHORT}[option_type]
    return stop_triggered(side, "stop_loss", strike, spot)


def broker_flat(position_side: str, qty: Decimal, broker_qty: Decimal) -> bool:
    """Whether the broker no longer holds our position: nothing, the other side, or only dust of it."""
    held = broker_qty if position_side == Position.Side.LONG else -broker_qty
    return held <= qty * DUST


def spot_symbol(broker: str, underlying: str) -> str | None:
    """Where the underlying's spot is quoted for this adapter: the index on Kite, the bare name on paper."""
    if broker == Broker.KITE:
        return INDEX_SYMBOLS.get(underlying)
    if broker == Broker.PAPER:
        return underlying
    return None


def _plain(value: Decimal) -> str:
    return format(Decimal(value).normalize(), "f")


@dataclass(frozen=True)
class Trigger:
    kind: str  # "stop_loss" | "take_profit" | "spot_stop"
    why: str
    with_hedge: bool = False


def position_trigger(position: Position, *, price: Decimal | None, spot: Decimal | None) -> Trigger | None:
    """What, if anything, closes ``position`` at these prices. The strike stop of an option main leg comes
    first (it closes the hedge too), then the stop loss, then the take profit."""
    meta = position.meta or {}
    if (spot is not None and meta.get("role") == "main" and meta.get("spot_stop")
            and position.side == Position.Side.SHORT and meta.get("option_type") in ("PE", "CE")):
        strike = Decimal(meta["spot_stop"])
        if spot_stop_triggered(meta["option_type"], strike, spot):
            where = "at or below" if meta["option_type"] == "PE" else "at or above"
            return Trigger("spot_stop", f"Stop loss hit: {meta.get('underlying', 'the underlying')} spot {_plain(spot)}"
                           f" {where} the {_plain(strike)} {meta['option_type']} strike", with_hedge=True)
    if price is None:
        return None
    if position.stop_loss is not None and stop_triggered(position.side, "stop_loss", position.stop_loss, price):
        return Trigger("stop_loss", f"Stop loss hit at {_plain(price)} (stop {_plain(position.stop_loss)})")
    if position.take_profit is not None and stop_triggered(position.side, "take_profit", position.take_profit, price):
        return Trigger("take_profit", f"Take profit hit at {_plain(price)} (target {_plain(position.take_profit)})")
    return None


# --- the watcher ---------------------------------------------------------------------------------------------------

@dataclass
class WatchResult:
    checked: int = 0
    closes: list[int] = field(default_factory=list)  # executions created
    reconciled: list[int] = field(default_factory=list)  # positions booked closed at the broker's word
    skipped: list[str] = field(default_factory=list)  # accounts not watched this round, and why


def watched_positions():
    """Open positions with something to watch, on accounts that can still trade."""
    return (Position.objects.filter(status=Position.Status.OPEN, account__enabled=True)
            .exclude(account__status=BrokerAccount.Status.LOGIN_NEEDED)
            .filter(Q(stop_loss__isnull=False) | Q(take_profit__isnull=False)
                    | Q(meta__role="main", meta__has_key="spot_stop"))
            .select_related("account", "account__owner").order_by("account_id", "id"))


def stops_watch() -> WatchResult:
    """One round over every watched position. Safe to run twice at once: closes are claimed per position."""
    result = WatchResult()
    by_account: dict[int, list[Position]] = defaultdict(list)
    for position in watched_positions():
        by_account[position.account_id].append(position)
    for rows in by_account.values():
        account = rows[0].account
        result.checked += len(rows)
        try:
            if account.broker == Broker.BINANCE and not account.is_paper:
                _reconcile_at_broker(account, rows, result)
            elif not account.is_paper and not settings.LIVE_TRADING_ENABLED:
                result.skipped.append(f"{account.pk}: live trading is switched off")
            else:
                _watch_account(account, rows, result)
        except Exception:  # noqa: BLE001 - one account's failure must not leave every other account unwatched
            log.exception("stop watcher: account %s failed", account.pk)
            result.skipped.append(f"{account.pk}: internal error")
    return result


def _prices(account: BrokerAccount, adapter: BrokerAdapter, symbols: set[str], result: WatchResult):
    try:
        return adapter.last_prices(sorted(symbols))
    except BrokerAuthError as exc:
        BrokerAccount.objects.filter(pk=account.pk).update(
            status=BrokerAccount.Status.LOGIN_NEEDED, status_message=f"Broker login needed: {exc.message}"[:300])
        result.skipped.append(f"{account.pk}: {exc.message}")
    except BrokerError as exc:  # a blip or a rate limit: the next round asks again
        log.warning("stop watcher: no prices for account %s: %s", account.pk, exc.message)
        result.skipped.append(f"{account.pk}: {exc.message}")
    return None


def _store_prices(adapter: BrokerAdapter, rows: list[Position], prices: dict[str, Decimal]) -> None:
    """Mark the positions (and, for real brokers, the shared quotes) with the prices just read."""
    for position in rows:
        price = prices.get(position.symbol)
        if price is not None and price != position.last_price:
            Position.objects.filter(pk=position.pk, status=Position.Status.OPEN).update(last_price=price)
            position.last_price = price
    if getattr(adapter, "broker", Broker.PAPER) != Broker.PAPER:  # paper prices *are* the quotes
        from brokers.adapters.paper import quote_set

        for symbol, price in prices.items():
            quote_set(broker=adapter.broker, symbol=symbol, price=price)


def _watch_account(account: BrokerAccount, rows: list[Position], result: WatchResult) -> None:
    adapter = get_adapter(account)
    broker = getattr(adapter, "broker", account.broker)
    spots = {p.pk: spot_symbol(broker, p.meta.get("underlying", "")) for p in rows if p.meta.get("spot_stop")}
    prices = _prices(account, adapter, {p.symbol for p in rows} | {s for s in spots.values() if s}, result)
    if prices is None:
        return
    _store_prices(adapter, rows, prices)
    for position in rows:
        spot_key = spots.get(position.pk)
        trigger = position_trigger(position, price=prices.get(position.symbol),
                                   spot=prices.get(spot_key) if spot_key else None)
        if trigger is not None:
            execution = _close_once(position, trigger)
            if execution is not None:
                result.closes.append(execution.pk)


def _recently_failed(position: Position) -> bool:
    since = timezone.now() - timedelta(seconds=settings.STOP_RETRY_SECONDS)
    return Execution.objects.filter(
        account_id=position.account_id, kind=Execution.Kind.CLOSE, intent__position_id=position.pk,
        intent__trigger__in=WATCH_TRIGGERS, status__in=(Execution.Status.FAILED, Execution.Status.REJECTED),
        finished_at__gte=since,
    ).exists()


def _close_once(position: Position, trigger: Trigger) -> Execution | None:
    """Start the close, unless the position is gone, a close of it is already under way, or one just failed."""
    with transaction.atomic():
        locked = Position.objects.select_for_update().filter(pk=position.pk, status=Position.Status.OPEN).first()
        if locked is None or close_in_flight(locked) is not None or _recently_failed(locked):
            return None
        log.info("stop watcher: %s on position %s", trigger.why, locked.pk)
        return execution_create_close(position=locked, why=trigger.why, trigger=trigger.kind,
                                      with_hedge=trigger.with_hedge)


# --- Binance: the exchange closes, we reconcile ----------------------------------------------------------------

def _reconcile_at_broker(account: BrokerAccount, rows: list[Position], result: WatchResult) -> None:
    """Book positions whose exchange-side stop or target already closed them at Binance."""
    adapter = get_adapter(account)
    try:
        held: dict[str, Decimal] = {}
        for row in adapter.positions():
            held[row.symbol] = held.get(row.symbol, Decimal("0")) + row.qty
    except BrokerAuthError as exc:
        result.skipped.append(f"{account.pk}: {exc.message}")
        return
    except BrokerError as exc:
        log.warning("stop watcher: no positions from account %s: %s", account.pk, exc.message)
        result.skipped.append(f"{account.pk}: {exc.message}")
        return
    prices = _prices(account, adapter, {p.symbol for p in rows}, result) or {}
    _store_prices(adapter, rows, prices)
    for position in rows:
        if not broker_flat(position.side, position.qty, held.get(position.symbol, Decimal("0"))):
            continue
        price = prices.get(position.symbol) or position.last_price or position.avg_price
        if _book_broker_close(position, price, broker=account.get_broker_display()):
            result.reconciled.append(position.pk)
            try:
                adapter.cancel_protection(symbol=position.symbol)  # the other of the pair may still be open
            except BrokerError as exc:
                log.warning("could not cancel the stop/target left on %s: %s", position.symbol, exc.message)


def _book_broker_close(position: Position, price: Decimal, *, broker: str) -> bool:
    with transaction.atomic():
        locked = Position.objects.select_for_update().filter(pk=position.pk, status=Position.Status.OPEN).first()
        if locked is None:
            return False
        # An execution of ours may be what emptied the broker's side (a close sent, not yet booked): it books itself.
        if Execution.objects.filter(account_id=locked.account_id,
                                    status__in=(Execution.Status.PENDING, Execution.Status.RUNNING)).exists():
            return False
        levels = ", ".join(f"{name} {_plain(level)}" for name, level in (("stop", locked.stop_loss),
                                                                         ("target", locked.take_profit)) if level)
        now = timezone.now()
        execution = Execution.objects.create(
            account_id=locked.account_id, kind=Execution.Kind.CLOSE, status=Execution.Status.FILLED,
            reason_code="closed_at_broker", started_at=now, finished_at=now,
            reason=(f"Closed at broker (stop/target): {broker} no longer holds {locked.symbol}; booked at the last "
                    f"price {_plain(price)}" + (f" ({levels})" if levels else "")),
            intent={"format": "manual", "action": "exit", "symbol": locked.symbol, "position_id": locked.pk,
                    "trigger": "broker"},
        )
        side = "sell" if locked.side == Position.Side.LONG else "buy"
        position_apply_fill(account=locked.account, symbol=locked.symbol, side=side, qty=locked.qty, price=price)
        transaction.on_commit(lambda: _publish(execution.pk))
    return True


def _publish(execution_id: int) -> None:
    from brokers.live import publish_execution

    publish_execution(Execution.objects.select_related("account__owner").get(pk=execution_id))
