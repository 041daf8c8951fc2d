"""Customer API for broker accounts, positions, orders and executions (``/api/v1/``; routes in tradeflow/api_urls.py).

Views are thin: tenant rows come from ``brokers.selectors`` (which take the user), writes go through
``brokers.services``. Broker credentials are write-only: no serializer here has a field that reads them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import django_filters
from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from brokers import selectors
from brokers.models import BrokerAccount, Execution, Order, Position
from brokers.services import account_create, account_set_enabled, api_key_regenerate, connect, position_close
from tradeflow.api_common import Conflict, UtcDateTimeFilter, owned

# Broker options a customer may read back; anything else (a proxy URL with its password) stays server-side.
PUBLIC_OPTIONS = ("product", "expiry_rule", "market", "testnet", "leverage", "session_date")


class AccountSerializer(serializers.ModelSerializer):
    webhook_key_prefix = serializers.SerializerMethodField(help_text="The webhook key's first characters")
    webhook_key_last_used = serializers.SerializerMethodField()
    options = serializers.SerializerMethodField(help_text="Broker options (a saved proxy is never returned)")
    has_credentials = serializers.SerializerMethodField(help_text="Whether a broker API key and secret are saved")

    class Meta:
        model = BrokerAccount
        fields = ["id", "label", "broker", "mode", "enabled", "status", "status_message", "currency",
                  "paper_capital", "balance", "equity", "options", "has_credentials", "last_sync", "created_at",
                  "webhook_key_prefix", "webhook_key_last_used"]
        read_only_fields = fields

    def _key(self, account: BrokerAccount):
        return getattr(account, "webhook_key", None)

    def get_webhook_key_prefix(self, account: BrokerAccount) -> str | None:
        key = self._key(account)
        return key.masked if key else None

    def get_webhook_key_last_used(self, account: BrokerAccount) -> datetime | None:
        key = self._key(account)
        return key.last_used if key else None

    def get_options(self, account: BrokerAccount) -> dict:
        return {k: v for k, v in (account.options or {}).items() if k in PUBLIC_OPTIONS}

    def get_has_credentials(self, account: BrokerAccount) -> bool:
        return bool(account.api_key and account.api_secret)


class PaperAccountCreateSerializer(serializers.Serializer):
    label = serializers.CharField(max_length=80)
    currency = serializers.ChoiceField(choices=["INR", "USD", "USDT"], default="INR")
    paper_capital = serializers.DecimalField(max_digits=16, decimal_places=2, min_value=Decimal("1"),
                                             default=Decimal("1000000"))


class WebhookKeySerializer(serializers.Serializer):
    account = AccountSerializer()
    webhook_key = serializers.CharField(help_text="The full webhook key: shown in this answer only, store it now")
    webhook_url = serializers.CharField()


def _with_key(request, account: BrokerAccount, raw: str, code: int) -> Response:
    account = selectors.account_get(user=request.user, pk=account.pk)  # fresh, with the new key's prefix
    return Response({"account": AccountSerializer(account).data, "webhook_key": raw,
                     "webhook_url": f"{settings.PUBLIC_URL}/api/v1/webhooks/{raw}"}, status=code)


class AccountList(generics.ListAPIView):
    """Your broker accounts. POST creates a paper account and answers its webhook key, once."""

    serializer_class = AccountSerializer
    queryset = BrokerAccount.objects.none()  # for the schema; rows come from get_queryset

    def get_queryset(self):
        return selectors.account_list(user=self.request.user)

    @extend_schema(request=PaperAccountCreateSerializer, responses={201: WebhookKeySerializer})
    def post(self, request):
        data = PaperAccountCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        account, key = account_create(owner=request.user, **data.validated_data)
        return _with_key(request, account, key.raw, status.HTTP_201_CREATED)


class AccountDetail(generics.RetrieveAPIView):
    serializer_class = AccountSerializer

    def get_object(self):
        return owned(selectors.account_get, user=self.request.user, pk=self.kwargs["pk"])


class _AccountSwitch(APIView):
    enabled: bool

    @extend_schema(request=None, responses=AccountSerializer)
    def post(self, request, pk: int):
        account = owned(selectors.account_get, user=request.user, pk=pk)
        account_set_enabled(account=account, enabled=self.enabled, actor=request.user)
        return Response(AccountSerializer(account).data)


class AccountEnable(_AccountSwitch):
    """Enable the account: signals trade on it again."""

    enabled = True


class AccountDisable(_AccountSwitch):
    """Disable the account: new signals are rejected; closes still run."""

    enabled = False


class AccountRegenerateKey(APIView):
    """A new webhook key; the old one stops working at once. The new key is in this answer only."""

    @extend_schema(request=None, responses=WebhookKeySerializer)
    def post(self, request, pk: int):
        account = owned(selectors.account_get, user=request.user, pk=pk)
        key = api_key_regenerate(account=account, actor=request.user)
        return _with_key(request, account, key.raw, status.HTTP_200_OK)


class CredentialsSerializer(serializers.Serializer):
    api_key = serializers.RegexField(r"^\S+$", max_length=200, write_only=True,
                                     error_messages={"invalid": "Paste the value without spaces."})
    api_secret = serializers.RegexField(r"^\S+$", max_length=200, write_only=True,
                                        error_messages={"invalid": "Paste the value without spaces."})
    testnet = serializers.BooleanField(required=False, write_only=True, help_text="Binance only: a testnet key")


class CredentialsResultSerializer(serializers.Serializer):
    account = AccountSerializer()
    warnings = serializers.ListField(child=serializers.CharField(), help_text="e.g. the key has no IP whitelist")


class AccountCredentials(APIView):
    """Replace the broker API key and secret. Write-only: no endpoint ever returns them. Binance checks the key
    first (a refused key changes nothing); Kite ends the session, so log in to Kite again on the account page."""

    @extend_schema(request=CredentialsSerializer, responses=CredentialsResultSerializer)
    def put(self, request, pk: int):
        account = owned(selectors.account_get, user=request.user, pk=pk)
        data = CredentialsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            warnings = connect.account_credentials_replace(account=account, actor=request.user, **data.validated_data)
        except connect.ConnectError as exc:
            raise serializers.ValidationError({exc.field or "non_field_errors": exc.message}) from exc
        return Response({"account": AccountSerializer(account).data, "warnings": warnings})


# --- positions ---------------------------------------------------------------------------------------------

class PositionSerializer(serializers.ModelSerializer):
    unrealized_pnl = serializers.DecimalField(max_digits=28, decimal_places=8, read_only=True)

    class Meta:
        model = Position
        fields = ["id", "account", "symbol", "side", "qty", "avg_price", "last_price", "unrealized_pnl",
                  "realized_pnl", "stop_loss", "take_profit", "status", "opened_at", "closed_at", "updated_at"]
        read_only_fields = fields


class PositionFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Position.Status.choices)
    account = django_filters.NumberFilter(field_name="account_id")
    symbol = django_filters.CharFilter(field_name="symbol", lookup_expr="iexact")

    class Meta:
        model = Position
        fields = ["status", "account", "symbol"]


class PositionList(generics.ListAPIView):
    """Your positions, open and closed (filter with `status=open`)."""

    serializer_class = PositionSerializer
    filterset_class = PositionFilter
    queryset = Position.objects.none()  # for the schema; rows come from get_queryset

    def get_queryset(self):
        return selectors.position_list(user=self.request.user, status=None)


class PositionDetail(generics.RetrieveAPIView):
    serializer_class = PositionSerializer

    def get_object(self):
        return owned(selectors.position_get, user=self.request.user, pk=self.kwargs["pk"])


class CloseSerializer(serializers.Serializer):
    execution_id = serializers.IntegerField(help_text="The close's execution: follow it under /executions/")
    status = serializers.CharField()


class PositionClose(APIView):
    """Close the position at market. Answers 202 with the close's execution; 409 if it is already closed."""

    @extend_schema(request=None, responses={202: CloseSerializer})
    def post(self, request, pk: int):
        position = owned(selectors.position_get, user=request.user, pk=pk)
        if position.status != Position.Status.OPEN:
            raise Conflict(f"{position.symbol} is already closed", code="already_closed")
        execution = position_close(position=position, actor=request.user)
        return Response({"execution_id": execution.pk, "status": execution.status}, status=status.HTTP_202_ACCEPTED)


# --- orders and executions -----------------------------------------------------------------------------------

class OrderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Order
        fields = ["id", "account", "execution", "leg", "client_order_id", "broker_order_id", "symbol", "side",
                  "order_type", "qty", "price", "trigger_price", "filled_qty", "avg_price", "status",
                  "reject_reason", "created_at", "sent_at", "filled_at"]
        read_only_fields = fields


class OrderFilter(django_filters.FilterSet):
    account = django_filters.NumberFilter(field_name="account_id")
    symbol = django_filters.CharFilter(field_name="symbol", lookup_expr="iexact")
    status = django_filters.MultipleChoiceFilter(choices=Order.Status.choices)
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Order
        fields = ["account", "symbol", "status", "created_after", "created_before"]


class OrderList(generics.ListAPIView):
    """Your orders, newest first. Filters: account, symbol, status (repeatable), created_after/created_before."""

    serializer_class = OrderSerializer
    filterset_class = OrderFilter
    queryset = Order.objects.none()  # for the schema; rows come from get_queryset

    def get_queryset(self):
        return selectors.order_list(user=self.request.user)


class ExecutionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Execution
        fields = ["id", "signal", "account", "subscription", "kind", "status", "reason_code", "reason", "intent",
                  "attempts", "created_at", "started_at", "finished_at", "latency_ms", "slippage", "slippage_bps"]
        read_only_fields = fields
        extra_kwargs = {"reason_code": {"help_text": "Why it was rejected or failed, for programs (e.g. "
                                                     "max_open_positions)"},
                        "reason": {"help_text": "Why it was rejected or failed, for people"}}


class ExecutionFilter(django_filters.FilterSet):
    account = django_filters.NumberFilter(field_name="account_id")
    status = django_filters.MultipleChoiceFilter(choices=Execution.Status.choices)
    signal = django_filters.UUIDFilter(field_name="signal_id")
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Execution
        fields = ["account", "status", "signal", "created_after", "created_before"]


class ExecutionList(generics.ListAPIView):
    """What happened to each signal on each of your accounts: filled, placed, rejected (with the reason) or failed."""

    serializer_class = ExecutionSerializer
    filterset_class = ExecutionFilter
    queryset = Execution.objects.none()  # for the schema; rows come from get_queryset

    def get_queryset(self):
        return selectors.execution_list(user=self.request.user)


class ExecutionDetail(generics.RetrieveAPIView):
    serializer_class = ExecutionSerializer

    def get_object(self):
        return owned(lambda **kw: selectors.execution_list(user=self.request.user).get(**kw), pk=self.kwargs["pk"])
