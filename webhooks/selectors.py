from django.db.models import Exists, OuterRef, Q, QuerySet

from brokers.models import Execution
from webhooks.models import Signal, WebhookLog


def webhook_log_list(*, user) -> QuerySet[WebhookLog]:
    return WebhookLog.objects.filter(account__owner=user).select_related("account")


def signal_list(*, user) -> QuerySet[Signal]:
    """Signals that reached the user: sent to one of their accounts, or a bot's alert executed on one of them."""
    mine = Execution.objects.filter(signal=OuterRef("pk"), account__owner=user)
    return Signal.objects.filter(Q(account__owner=user) | Q(Exists(mine))).select_related("bot")


def signal_get(*, user, pk) -> Signal:
    return signal_list(user=user).get(pk=pk)
