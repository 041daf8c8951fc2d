from django.db.models import QuerySet

from webhooks.models import WebhookLog


def webhook_log_list(*, user) -> QuerySet[WebhookLog]:
    return WebhookLog.objects.filter(account__owner=user).select_related("account")
