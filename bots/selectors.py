"""Reads of bots and subscriptions. A customer's subscriptions are always fetched with the customer."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, QuerySet
from django.utils import timezone

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


def bot_track_record(*, bot: Bot, days: int = 30) -> dict:
    """What a customer weighs before subscribing: how often the bot signals and how its subscribers' orders went.

    Counted over every subscriber (not only the viewer): a bot's record is public to its would-be followers.
    """
    from brokers.models import Execution

    since = timezone.now() - timedelta(days=days)
    signals = bot_signal_list(bot=bot)
    outcomes = dict(Execution.objects.filter(subscription__bot=bot, created_at__gte=since).values("status")
                    .annotate(n=Count("id")).order_by().values_list("status", "n"))
    filled = outcomes.get(Execution.Status.FILLED, 0)
    refused = outcomes.get(Execution.Status.REJECTED, 0) + outcomes.get(Execution.Status.FAILED, 0)
    return {
        "days": days,
        "alerts": signals.filter(received_at__gte=since).count(),
        "first_alert": signals.order_by("received_at").values_list("received_at", flat=True).first(),
        "filled": filled,
        "refused": refused,
        "fill_rate": round(100 * filled / (filled + refused)) if filled + refused else None,
        "subscribers": bot_subscriber_count(bot=bot),
        "recent": list(signals[:10]),
    }
