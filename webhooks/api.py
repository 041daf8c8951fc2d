"""Customer API for received signals and the webhook log (``/api/v1/signals/``, ``/api/v1/webhook-log/``).

The webhook receivers themselves are plain Django views (``webhooks/views.py``), outside DRF on purpose: they
answer TradingView in milliseconds and authenticate with the account's webhook key, not an API token.
"""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema_field
from rest_framework import generics, serializers

from brokers.api import ExecutionSerializer
from tradeflow.api_common import IntegerFilter, UtcDateTimeFilter, owned
from webhooks.models import Signal, WebhookLog
from webhooks.selectors import signal_get, signal_list, webhook_log_list


class SignalSerializer(serializers.ModelSerializer):
    bot_name = serializers.CharField(source="bot.name", default=None, read_only=True, allow_null=True)
    executions = serializers.SerializerMethodField(help_text="What became of it on each of your accounts")

    class Meta:
        model = Signal
        fields = ["id", "format", "account", "bot", "bot_name", "client_id", "payload", "intent", "received_at",
                  "ack_ms", "executions"]
        read_only_fields = fields

    @extend_schema_field(ExecutionSerializer(many=True))
    def get_executions(self, signal: Signal) -> list[dict]:
        user = self.context["request"].user
        rows = signal.executions.filter(account__owner=user).order_by("id")
        return ExecutionSerializer(rows, many=True).data

class SignalFilter(django_filters.FilterSet):
    account = IntegerFilter(field_name="account_id")
    format = django_filters.ChoiceFilter(choices=Signal.Format.choices)
    received_after = UtcDateTimeFilter(field_name="received_at", lookup_expr="gte")
    received_before = UtcDateTimeFilter(field_name="received_at", lookup_expr="lt")

    class Meta:
        model = Signal
        fields = ["account", "format", "received_after", "received_before"]


class SignalList(generics.ListAPIView):
    """Signals received for you (your accounts' alerts and the alerts of bots you follow), with their executions."""

    serializer_class = SignalSerializer
    filterset_class = SignalFilter
    queryset = Signal.objects.none()  # for the schema; rows come from get_queryset

    def get_queryset(self):
        return signal_list(user=self.request.user)


class SignalDetail(generics.RetrieveAPIView):
    serializer_class = SignalSerializer

    def get_object(self):
        return owned(signal_get, user=self.request.user, pk=self.kwargs["pk"])


class WebhookLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookLog
        fields = ["id", "account", "signal", "method", "path", "source_ip", "status", "payload", "response",
                  "latency_ms", "error", "created_at"]
        read_only_fields = fields


class WebhookLogFilter(django_filters.FilterSet):
    account = IntegerFilter(field_name="account_id")
    status = IntegerFilter(field_name="status")
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = WebhookLog
        fields = ["account", "status", "created_after", "created_before"]


class WebhookLogList(generics.ListAPIView):
    """Every webhook request to your accounts, good or bad (secrets redacted), newest first."""

    serializer_class = WebhookLogSerializer
    filterset_class = WebhookLogFilter
    queryset = WebhookLog.objects.none()  # for the schema; rows come from get_queryset

    def get_queryset(self):
        return webhook_log_list(user=self.request.user)


class WebhookLogDetail(generics.RetrieveAPIView):
    serializer_class = WebhookLogSerializer

    def get_object(self):
        return owned(lambda **kw: webhook_log_list(user=self.request.user).get(**kw), pk=self.kwargs["pk"])
