"""The price feed: open positions marked to market, and the changes pushed to the customers' dashboards.

Production: Celery beat runs ``prices_feed_task`` every ``PRICE_FEED_SECONDS``. One ``last_prices`` call per
live broker account fetches every symbol it holds (paper accounts all read the same quotes: one call for all);
the positions whose price moved are saved in one bulk UPDATE and each user gets one "prices" event with their
repriced positions (the admins one with all of them).

Embedded demo: nothing moves a paper quote except a fill, so ``simulated_feed_start`` (started by the first
websocket connection when ``SIMULATED_FEED`` is on) walks the paper quotes of open positions by at most
``SIMULATED_STEP`` per tick and marks the positions, in a daemon thread of the server process.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from brokers.adapters import get_adapter
from brokers.adapters.base import BrokerError
from brokers.adapters.paper import PaperAdapter
from brokers.live import num, publish_prices, use_loop
from brokers.models import Broker, BrokerAccount, Position, Quote

log = logging.getLogger(__name__)
SIMULATED_STEP = Decimal("0.002")  # ±0.2 % per tick at most
PAPER = "paper"


@dataclass
class MarkResult:
    checked: int = 0
    changed: list[int] = field(default_factory=list)  # positions repriced
    skipped: list[str] = field(default_factory=list)  # accounts without prices this round, and why


# What a tick needs of each open position, read as plain values: building 500 Position and BrokerAccount objects
# (and decrypting their accounts' credentials) took most of a tick's time before anything reached a screen.
MARK_FIELDS = ("id", "account_id", "account__owner_id", "account__broker", "account__mode", "symbol", "side", "qty",
               "avg_price", "last_price", "realized_pnl")


@dataclass
class Mark:
    id: int
    account_id: int
    owner_id: int
    broker: str
    mode: str
    symbol: str
    side: str
    qty: Decimal
    avg_price: Decimal
    last_price: Decimal | None
    realized_pnl: Decimal

    @property
    def is_paper(self) -> bool:
        return self.broker == Broker.PAPER or self.mode == BrokerAccount.Mode.PAPER


def marked_positions():
    """Open positions on accounts that are switched on and logged in. Live accounts only while live trading is
    on, like the stop watcher: otherwise a Kite account without a session would be asked every tick."""
    qs = (Position.objects.filter(status=Position.Status.OPEN, account__enabled=True)
          .exclude(account__status=BrokerAccount.Status.LOGIN_NEEDED).order_by("account_id", "id"))
    if not settings.LIVE_TRADING_ENABLED:
        qs = qs.filter(Q(account__broker=Broker.PAPER) | Q(account__mode=BrokerAccount.Mode.PAPER))
    return [Mark(*row) for row in qs.values_list(*MARK_FIELDS)]


def price_row(mark: Mark) -> dict:
    sign = 1 if mark.side == Position.Side.LONG else -1
    unrealized = (mark.last_price - mark.avg_price) * mark.qty * sign
    return {"id": mark.id, "last_price": num(mark.last_price), "unrealized_pnl": num(unrealized),
            "realized_pnl": num(mark.realized_pnl)}


def prices_mark() -> MarkResult:
    """One round: read, publish and store the marks of every open position."""
    result = MarkResult()
    ts = time.time()
    # One price read per source: every paper account reads the same paper quotes, so they share one call;
    # a live account asks its own broker session.
    by_source: dict[object, list[Mark]] = defaultdict(list)
    for mark in marked_positions():
        by_source[PAPER if mark.is_paper else mark.account_id].append(mark)
    live = BrokerAccount.objects.in_bulk([k for k in by_source if k != PAPER])
    changed: list[Mark] = []
    for source, rows in by_source.items():
        result.checked += len(rows)
        try:
            adapter = get_adapter(live[source]) if source != PAPER else PaperAdapter(None)
            prices = adapter.last_prices(sorted({m.symbol for m in rows}))
        except BrokerError as exc:  # a blip, a rate limit, a lost session (the stop watcher flags those)
            result.skipped.append(f"{rows[0].account_id}: {exc.message}")
            continue
        except Exception:  # noqa: BLE001 - one account's failure must not freeze every other dashboard
            log.exception("price feed: account %s failed", rows[0].account_id)
            result.skipped.append(f"{rows[0].account_id}: internal error")
            continue
        for mark in rows:
            price = prices.get(mark.symbol)
            if price is not None and price != mark.last_price:
                mark.last_price = price
                changed.append(mark)
    if not changed:
        return result
    rows_by_user: dict[int, list[dict]] = defaultdict(list)
    for mark in changed:
        rows_by_user[mark.owner_id].append(price_row(mark))
        result.changed.append(mark.id)
    # Screens first: the marks are display figures, and storing hundreds of rows would only delay them.
    publish_prices(dict(rows_by_user), ts=ts)
    marks_store(changed)
    return result


@contextmanager
def display_write():
    """A transaction for figures that are only displayed and rewritten every tick (marks, the demo's quotes): on
    PostgreSQL its commit does not wait for the WAL to reach the disk. Measured here, a durable commit of a
    20-row UPDATE took p50 1.1 ms but p99 320 ms (the disk's flush stalls); without the wait, p99 1.7 ms. A crash
    may lose the last tick's marks, which the next tick writes again; fills and signals keep durable commits."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield


def marks_store(marks: list[Mark]) -> None:
    """One UPDATE per distinct price (about one per symbol) in one transaction. ``bulk_update``'s CASE over every
    id took longer to build than the tick's reads and publishing together. A position closed meanwhile may get a
    last mark: its realized P&L is already booked."""
    by_price: dict[Decimal, list[int]] = defaultdict(list)
    for mark in marks:
        by_price[mark.last_price].append(mark.id)
    with display_write():
        if connection.vendor == "postgresql":  # ids as one array parameter: no 500-placeholder query to build
            table = connection.ops.quote_name(Position._meta.db_table)
            with connection.cursor() as cursor:
                for price, ids in by_price.items():
                    cursor.execute(f"UPDATE {table} SET last_price = %s WHERE id = ANY(%s)",  # noqa: S608
                                   [price, ids])
        else:
            for price, ids in by_price.items():
                Position.objects.filter(pk__in=ids).update(last_price=price)


def _tick(price: Decimal) -> Decimal:
    return Decimal("0.01") if price >= 1 else Decimal("0.0001")


def paper_quotes_walk(*, step: Decimal = SIMULATED_STEP, rng: random.Random | None = None) -> dict[str, Decimal]:
    """Move each paper quote of a symbol with an open paper position by a random step within ±``step``."""
    rng = rng or random.Random()
    symbols = set(Position.objects.filter(Q(account__broker=Broker.PAPER) | Q(account__mode=BrokerAccount.Mode.PAPER),
                                          status=Position.Status.OPEN).values_list("symbol", flat=True))
    quotes = list(Quote.objects.filter(broker=Broker.PAPER, symbol__in=symbols))
    now = timezone.now()
    for quote in quotes:
        factor = Decimal(1) + step * Decimal(str(rng.uniform(-1, 1)))
        moved = (quote.price * factor).quantize(_tick(quote.price), rounding=ROUND_HALF_UP)
        # Rounding to the tick must not push the move past the bound (or the price to zero).
        if moved <= 0 or abs(moved - quote.price) > quote.price * step:
            moved = quote.price
        quote.price, quote.updated_at = moved, now
    with display_write():
        Quote.objects.bulk_update(quotes, ["price", "updated_at"])
    return {q.symbol: q.price for q in quotes}


_feed_lock = threading.Lock()
_feed_thread: threading.Thread | None = None
_feed_stop = threading.Event()


def _feed_loop(loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
    use_loop(loop)  # the in-memory channel layer is the server loop's: publish onto it
    rng = random.Random()
    while not stop.wait(settings.PRICE_FEED_SECONDS) and not loop.is_closed():
        try:
            close_old_connections()
            paper_quotes_walk(rng=rng)
            prices_mark()
        except Exception:  # noqa: BLE001 - a demo feed must keep ticking through a locked SQLite file
            log.warning("simulated price feed: tick failed", exc_info=True)
    close_old_connections()


def simulated_feed_start(loop: asyncio.AbstractEventLoop) -> bool:
    """Start the embedded demo feed once per process; True when this call started it."""
    global _feed_thread, _feed_stop
    with _feed_lock:
        if _feed_thread is not None and _feed_thread.is_alive():
            return False
        _feed_stop = threading.Event()
        _feed_thread = threading.Thread(target=_feed_loop, args=(loop, _feed_stop), daemon=True,
                                        name="simulated-price-feed")
        _feed_thread.start()
        return True


def simulated_feed_stop(timeout: float = 5) -> None:
    with _feed_lock:
        thread = _feed_thread
        _feed_stop.set()
    if thread is not None:
        thread.join(timeout)
