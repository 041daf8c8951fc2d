from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from brokers.calc import ZERO, net_fill
from brokers.live import position_event, publish_on_commit, publish_positions_on_commit
from brokers.models import BrokerAccount, Position
from tradeflow.fastinsert import insert_objects, update_many
from tradeflow.precompiled import Precompiled


def _locked_open_position(account: BrokerAccount, symbol: str) -> Position | None:
    position = Position.objects.select_for_update().filter(account=account, symbol=symbol,
                                                           status=Position.Status.OPEN).first()
    if position is not None:
        position.account = account  # the live event reads its label: no second load (and decryption) of it
    return position


@transaction.atomic(savepoint=False)  # callers that hold a transaction roll it all back on an error anyway
def position_apply_fill(*, account: BrokerAccount, symbol: str, side: str, qty: Decimal, price: Decimal,
                        meta: dict | None = None) -> tuple[Position, Decimal]:
    """Book a fill into the account's net position for ``symbol``; returns (position, realized P&L).

    The open position row is locked, so concurrent fills on one symbol serialize. A reversal closes
    the old row and opens a new one for the remainder, keeping each row one round trip.
    """
    signed = qty if side == "buy" else -qty
    position = _locked_open_position(account, symbol)
    if position is None:
        try:
            with transaction.atomic():
                position = Position.objects.create(
                    account=account, symbol=symbol, side=Position.Side.LONG if signed > 0 else Position.Side.SHORT,
                    qty=abs(signed), avg_price=price, last_price=price, meta=meta or {},
                )
            publish_positions_on_commit(account.owner_id, [position])
            return position, ZERO
        except IntegrityError:  # another fill opened it first: lock it and net into it
            position = _locked_open_position(account, symbol)
    realized, remainder = _net(position, signed=signed, price=price, meta=meta, now=timezone.now())
    position.save()
    _credit(account, realized)
    booked = [position]
    if remainder is not None:
        remainder.save()
        booked.append(remainder)
        position = remainder
    publish_positions_on_commit(account.owner_id, booked)
    return position, realized


def _net(position: Position, *, signed: Decimal, price: Decimal, meta: dict | None, now) -> tuple[Decimal,
                                                                                              Position | None]:
    """Net a signed fill into the open ``position``, in memory: returns the realized P&L and, when the fill crossed
    zero, the unsaved new position of the remainder (the old one is closed)."""
    current = position.qty if position.side == Position.Side.LONG else -position.qty
    result = net_fill(qty=current, avg_price=position.avg_price, fill_qty=signed, fill_price=price)
    position.realized_pnl += result.realized
    position.last_price = price
    if result.qty == ZERO or result.reversed:
        position.status, position.closed_at = Position.Status.CLOSED, now
        if not result.reversed:
            position.qty = ZERO
    else:
        position.qty, position.avg_price = abs(result.qty), result.avg_price
        position.side = Position.Side.LONG if result.qty > 0 else Position.Side.SHORT
    remainder = None
    if result.reversed:
        remainder = Position(account=position.account, symbol=position.symbol,
                             side=Position.Side.LONG if result.qty > 0 else Position.Side.SHORT, qty=abs(result.qty),
                             avg_price=price, last_price=price, meta=meta or position.meta)
    return result.realized, remainder


def _credit(account: BrokerAccount, realized: Decimal) -> None:
    """A paper account's cash moves with its realized P&L (an UPDATE with an F expression: fills may race)."""
    if realized and account.is_paper:
        BrokerAccount.objects.filter(pk=account.pk).update(balance=F("balance") + realized)


@dataclass(frozen=True)
class Fill:
    account: BrokerAccount
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    meta: dict = field(default_factory=dict)
    levels: dict = field(default_factory=dict)  # stop_loss / take_profit to record on the open position


NETTED = ["realized_pnl", "last_price", "status", "closed_at", "qty", "avg_price", "side", "stop_loss", "take_profit",
          "updated_at"]


# Locked for every drain and bot batch: compiled once per process (tradeflow/precompiled.py).
_locked_open = Precompiled(lambda account_ids, symbols: Position.objects.select_for_update().filter(
    status=Position.Status.OPEN, account_id__any=account_ids, symbol__any=symbols), model=Position, arity=2,
    lists=(0, 1))


def positions_apply_fills(fills: list[Fill]) -> None:
    """``position_apply_fill`` for many fills on different (account, symbol) pairs (a batch of bot subscribers), in
    the caller's transaction, with the same netting (``_net``).

    The open positions of every pair are locked in one query; the fills that open a new position are inserted in
    one statement and those netted into an open one written in one statement. A second fill of a pair, or a first
    fill that races another one (the open-position unique key), is booked by ``position_apply_fill`` one by one.
    ``levels`` are written onto the position the fill leaves open.
    """
    now = timezone.now()
    held = {(p.account_id, p.symbol): p for p in _locked_open(sorted({f.account.pk for f in fills}),
                                                             sorted({f.symbol for f in fills}))}
    fresh: dict[tuple[int, str], Fill] = {}
    netted: list[Position] = []
    opened: list[Position] = []  # reversals' remainders
    rest, seen = [], set()
    for fill in fills:
        key = (fill.account.pk, fill.symbol)
        if key in seen:
            rest.append(fill)
            continue
        seen.add(key)
        position = held.get(key)
        if position is None:
            fresh[key] = fill
            continue
        position.account, position.updated_at = fill.account, now
        realized, remainder = _net(position, signed=fill.qty if fill.side == "buy" else -fill.qty, price=fill.price,
                                   meta=fill.meta, now=now)
        _credit(fill.account, realized)
        netted.append(position)
        if remainder is not None:
            opened.append(remainder)
        if remainder is not None or position.status == Position.Status.OPEN:
            for name, value in fill.levels.items():
                setattr(remainder or position, name, value)
    update_many(netted, NETTED)
    if opened:
        insert_objects([opened], savepoint=False)
    rows = [Position(account=f.account, symbol=f.symbol, side=Position.Side.LONG if f.side == "buy" else
                     Position.Side.SHORT, qty=f.qty, avg_price=f.price, last_price=f.price, meta=f.meta or {},
                     **f.levels) for f in fresh.values()]
    try:
        if rows:
            insert_objects([rows])  # in a savepoint inside the caller's transaction
    except IntegrityError:  # a first fill raced ours: book those one by one
        rows, rest = [], list(fresh.values()) + rest
    publish_on_commit([(p.account.owner_id, position_event(p)) for p in netted + opened + rows])
    for fill in rest:
        position_apply_fill(account=fill.account, symbol=fill.symbol, side=fill.side, qty=fill.qty, price=fill.price,
                            meta=fill.meta)
        if fill.levels:
            Position.objects.filter(account=fill.account, symbol=fill.symbol, status=Position.Status.OPEN).update(
                **fill.levels)


def position_close(*, position: Position, actor=None):
    """Close one open position at market through its broker (a manual close from a page or the API)."""
    from brokers.services.execution import execution_create_close

    return execution_create_close(position=position, actor=actor)
