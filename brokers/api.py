"""Customer API for broker accounts, positions, orders and executions (``/api/v1/``; routes in tradeflow/api_urls.py).

Views are thin: tenant rows come from ``brokers.selectors`` (which take the user), writes go through
``brokers.services``. Broker credentials are write-only: no serializer here has a field that reads them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import django_filters
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from brokers import selectors
from brokers.adapters.base import BrokerTransient
from brokers.forms import LIVE_OFF_HELP, NO_SPACES, PRODUCTS, proxy_validator
from brokers.models import Broker, BrokerAccount, Execution, Order, Position
from brokers.services import account_create, account_set_enabled, api_key_regenerate, connect, position_close
from tradeflow.api_common import Conflict, IntegerFilter, UtcDateTimeFilter, owned
from webhooks.services import WebhookError

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
    broker = serializers.ChoiceField(choices=["paper"], default="paper", help_text="`paper` (the default)")
    label = serializers.CharField(max_length=80)
    currency = serializers.ChoiceField(choices=["INR", "USD", "USDT"], default="INR")
    paper_capital = serializers.DecimalField(max_digits=16, decimal_places=2, min_value=Decimal("1"),
                                             default=Decimal("1000000"))


class WebhookKeySerializer(serializers.Serializer):
    account = AccountSerializer()
    webhook_key = serializers.CharField(help_text="The full webhook key: shown in this answer only, store it now")
    webhook_url = serializers.CharField()


def _with_key(request, account: BrokerAccount, raw: str, code: int, **extra) -> Response:
    account = selectors.account_get(user=request.user, pk=account.pk)  # fresh, with the new key's prefix
    return Response({"account": AccountSerializer(account).data, "webhook_key": raw,
                     "webhook_url": f"{settings.PUBLIC_URL}/api/v1/webhooks/{raw}", **extra}, status=code)


# --- connecting a real broker (the services of brokers/services/connect.py, as on the connect pages) ------------

def _secret(help_text: str) -> serializers.CharField:
    return serializers.CharField(max_length=200, write_only=True, validators=[NO_SPACES], help_text=help_text)


class _BrokerConnectSerializer(serializers.Serializer):
    """The fields of every connect form (brokers/forms.py ``BrokerConnectForm``)."""

    label = serializers.CharField(max_length=80)
    api_key = _secret("Write-only: never returned (the account shows whether one is saved)")
    api_secret = _secret("Write-only: never returned")
    mode = serializers.ChoiceField(choices=BrokerAccount.Mode.choices, default=BrokerAccount.Mode.PAPER,
                                   help_text="`live` sends real orders; only when the server allows live trading")

    def validate_mode(self, value: str) -> str:
        if value == BrokerAccount.Mode.LIVE and not connect.live_trading_allowed():
            raise serializers.ValidationError(LIVE_OFF_HELP)
        return value


class BinanceConnectSerializer(_BrokerConnectSerializer):
    broker = serializers.ChoiceField(choices=["binance"])
    market = serializers.ChoiceField(choices=list(connect.MARKETS), default="futures",
                                     help_text="`spot` or `futures` (USDⓈ-M)")
    testnet = serializers.BooleanField(default=False, help_text="A key from the Binance testnet (play money)")
    leverage = serializers.IntegerField(min_value=1, max_value=125, required=False, allow_null=True,
                                        help_text="Futures only; empty keeps the leverage set on Binance")


class KiteConnectSerializer(_BrokerConnectSerializer):
    broker = serializers.ChoiceField(choices=["kite"])
    product = serializers.ChoiceField(choices=[p for p, _ in PRODUCTS], default="NRML")
    expiry_rule = serializers.ChoiceField(choices=list(connect.EXPIRY_RULES), default="nearest_weekly")
    proxy = serializers.CharField(max_length=300, required=False, allow_blank=True, write_only=True,
                                  validators=[proxy_validator],
                                  help_text="Optional outbound proxy leaving from your Kite static IP (write-only)")


CREATE_SERIALIZERS = {Broker.PAPER: PaperAccountCreateSerializer, Broker.BINANCE: BinanceConnectSerializer,
                      Broker.KITE: KiteConnectSerializer}
CONNECTORS = {Broker.BINANCE: connect.binance_account_connect, Broker.KITE: connect.kite_account_connect}


class AccountCreatedSerializer(WebhookKeySerializer):
    warnings = serializers.ListField(child=serializers.CharField(), help_text="e.g. the key has no IP whitelist")
    kite_login_url = serializers.CharField(allow_null=True, help_text=(
        "Kite only: open it in a browser signed in to TradeFlow as you; Kite sends the browser back to "
        "`kite_redirect_url` (TradeFlow's web callback), which finishes the login. Valid for 15 minutes."))
    kite_redirect_url = serializers.CharField(allow_null=True, help_text=(
        "Kite only: the Redirect URL to register in your Kite Connect app"))


def _kite_urls(request, account: BrokerAccount) -> dict:
    return {"kite_login_url": connect.kite_login_redirect(account=account, user=request.user),
            "kite_redirect_url": settings.PUBLIC_URL + reverse("broker-kite-callback")}


def _refused(exc: connect.ConnectError) -> WebhookError:
    """The connect services' refusal, with their message, in the API's error format."""
    cause = exc.__cause__
    if isinstance(cause, DjangoValidationError):  # billing.services.limit_check
        return WebhookError(422, "plan_limit", exc.message)
    if isinstance(cause, BrokerTransient):
        return WebhookError(503, "broker_unavailable", exc.message)
    return WebhookError(422, "broker_refused", exc.message, {exc.field: exc.message} if exc.field else {})


ERROR = {"$ref": "#/components/schemas/Error"}  # the shared error format (tradeflow.api_common)


def _refusals(refused: str, untouched: str) -> dict:
    """The schema of ``_refused``'s answers: 422 (``refused`` says when) and 503; nothing was ``untouched``."""
    return {422: OpenApiResponse(ERROR, description=f"{refused}; nothing was {untouched}"),
            503: OpenApiResponse(ERROR, description="The broker could not be reached to check the key; nothing was "
                                                    f"{untouched}")}
ACCOUNT_CREATE = PolymorphicProxySerializer(
    component_name="AccountCreate", resource_type_field_name="broker",
    serializers={str(k): v for k, v in CREATE_SERIALIZERS.items()})


class AccountList(generics.ListAPIView):
    """Your broker accounts. POST creates one (`broker`: `paper`, the default, `binance` or `kite`) and answers its
    webhook key, once. Binance: the key is checked with Binance first; a refused key saves nothing (422). Kite: the
    answer carries `kite_login_url`; the login finishes on TradeFlow's web callback."""

    serializer_class = AccountSerializer
    queryset = BrokerAccount.objects.none()  # for the schema; rows come from get_queryset

    def get_queryset(self):
        return selectors.account_list(user=self.request.user)

    @extend_schema(request=ACCOUNT_CREATE, responses={
        201: AccountCreatedSerializer,
        **_refusals("The broker refused the key, or the plan's account limit is reached (code `broker_refused` / "
                    "`plan_limit`)", "saved"),
    })
    def post(self, request):
        broker = request.data.get("broker", Broker.PAPER) if isinstance(request.data, dict) else Broker.PAPER
        if broker not in CREATE_SERIALIZERS:
            raise serializers.ValidationError({"broker": f"Choose one of: {', '.join(CREATE_SERIALIZERS)}."})
        data = CREATE_SERIALIZERS[broker](data=request.data)
        data.is_valid(raise_exception=True)
        fields = {k: v for k, v in data.validated_data.items() if k != "broker"}
        if broker == Broker.PAPER:
            account, key = account_create(owner=request.user, **fields)
            return _with_key(request, account, key.raw, status.HTTP_201_CREATED, warnings=[], kite_login_url=None,
                             kite_redirect_url=None)
        try:
            connected = CONNECTORS[broker](owner=request.user, **fields)
        except connect.ConnectError as exc:
            raise _refused(exc) from exc
        kite = _kite_urls(request, connected.account) if broker == Broker.KITE else {
            "kite_login_url": None, "kite_redirect_url": None}
        return _with_key(request, connected.account, connected.key.raw, status.HTTP_201_CREATED,
                         warnings=connected.warnings, **kite)


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


class KiteLoginSerializer(serializers.Serializer):
    kite_login_url = serializers.CharField(help_text="Open it in a browser signed in to TradeFlow as you; valid for "
                                                     "15 minutes")
    kite_redirect_url = serializers.CharField(help_text="Where Kite sends the browser back (TradeFlow's web callback)")


class AccountKiteLogin(APIView):
    """A fresh Kite login URL for a Kite account (Kite sessions end every morning). The login finishes on
    TradeFlow's web callback, in a browser signed in to TradeFlow as you. 409 for a non-Kite account."""

    @extend_schema(request=None, responses=KiteLoginSerializer)
    def post(self, request, pk: int):
        account = owned(selectors.account_get, user=request.user, pk=pk)
        if account.broker != Broker.KITE:
            raise Conflict(f"{account.label} is not a Kite account: only Kite accounts log in", code="not_kite")
        return Response(_kite_urls(request, account))


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

    @extend_schema(request=CredentialsSerializer, responses={
        200: CredentialsResultSerializer,
        **_refusals("The broker refused the new key, or the account is a paper account (code `broker_refused`)",
                    "changed"),
    })
    def put(self, request, pk: int):
        account = owned(selectors.account_get, user=request.user, pk=pk)
        data = CredentialsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            warnings = connect.account_credentials_replace(account=account, actor=request.user, **data.validated_data)
        except connect.ConnectError as exc:  # the same answers as connecting: 422 refused, 503 unreachable
            raise _refused(exc) from exc
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
    account = IntegerFilter(field_name="account_id")
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
    account = IntegerFilter(field_name="account_id")
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
    account = IntegerFilter(field_name="account_id")
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
