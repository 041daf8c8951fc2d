"""Reads of tenant data. Every query that belongs to a user goes through a function that takes the user."""

from __future__ import annotations

from django.db.models import QuerySet

from brokers.models import BrokerAccount, Execution, Order, Position


def account_list(*, user) -> QuerySet[BrokerAccount]:
    return BrokerAccount.objects.filter(owner=user).select_related("webhook_key")


def account_get(*, user, pk: int) -> BrokerAccount:
    return account_list(user=user).get(pk=pk)


def position_list(*, user, status: str | None = Position.Status.OPEN) -> QuerySet[Position]:
    qs = Position.objects.filter(account__owner=user).select_related("account")
    return qs.filter(status=status) if status else qs


def position_get(*, user, pk: int) -> Position:
    return position_list(user=user, status=None).get(pk=pk)


def order_list(*, user) -> QuerySet[Order]:
    return Order.objects.filter(account__owner=user).select_related("account")


def execution_list(*, user) -> QuerySet[Execution]:
    return Execution.objects.filter(account__owner=user).select_related("account", "signal")


def position_snapshot(*, user) -> list[dict]:
    from brokers.live import position_event

    return [position_event(p) for p in position_list(user=user)]
