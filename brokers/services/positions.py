from __future__ import annotations

from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from brokers.calc import ZERO, net_fill
from brokers.live import publish_positions_on_commit
from brokers.models import BrokerAccount, Position


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
    current = position.qty if position.side == Position.Side.LONG else -position.qty
    result = net_fill(qty=current, avg_price=position.avg_price, fill_qty=signed, fill_price=price)
    now = timezone.now()
    position.realized_pnl += result.realized
    position.last_price = price
    if result.qty == ZERO or result.reversed:
        position.status, position.closed_at = Position.Status.CLOSED, now
        if not result.reversed:
            position.qty = ZERO
        position.save()
    else:
        position.qty, position.avg_price = abs(result.qty), result.avg_price
        position.side = Position.Side.LONG if result.qty > 0 else Position.Side.SHORT
        position.save()
    if result.realized and account.is_paper:
        BrokerAccount.objects.filter(pk=account.pk).update(balance=F("balance") + result.realized)
    booked = [position]
    if result.reversed:
        position = Position.objects.create(
            account=account, symbol=symbol, side=Position.Side.LONG if result.qty > 0 else Position.Side.SHORT,
            qty=abs(result.qty), avg_price=price, last_price=price, meta=meta or position.meta,
        )
        booked.append(position)
    publish_positions_on_commit(account.owner_id, booked)
    return position, result.realized


def position_close(*, position: Position, actor=None):
    """Close one open position at market through its broker (a manual close from a page or the API)."""
    from brokers.services.execution import execution_create_close

    return execution_create_close(position=position, actor=actor)
