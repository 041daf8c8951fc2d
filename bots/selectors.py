"""Reads of bots and subscriptions. A customer's subscriptions are always fetched with the customer."""

from __future__ import annotations

from django.db.models import QuerySet

from bots.models import Bot, Subscription
from brokers.models import BrokerAccount
from webhooks.models import Signal


def bot_list(*, user=None) -> QuerySet[Bot]:
    """Bots a customer can see: every bot not archived."""
    return Bot.objects.exclude(status=Bot.Status.ARCHIVED)


def bot_get(*, user=None, pk: int) -> Bot:
    return bot_list(user=user).get(pk=pk)


def subscription_list(*, user, bot: Bot | None = None) -> QuerySet[Subscription]:
    qs = (Subscription.objects.filter(user=user).exclude(status=Subscription.Status.UNSUBSCRIBED)
          .select_related("bot", "account"))
    return qs.filter(bot=bot) if bot is not None else qs


def subscription_get(*, user, pk: int) -> Subscription:
    return subscription_list(user=user).get(pk=pk)


def subscribable_accounts(*, user, bot: Bot) -> QuerySet[BrokerAccount]:
    """The user's accounts that can follow ``bot``: its broker, or paper."""
    return BrokerAccount.objects.filter(owner=user, broker__in=[bot.broker, "paper"])


def bot_signal_list(*, bot: Bot) -> QuerySet[Signal]:
    return Signal.objects.filter(bot=bot).order_by("-received_at")


def bot_subscriber_count(*, bot: Bot) -> int:
    return bot.subscriptions.exclude(status=Subscription.Status.UNSUBSCRIBED).count()
