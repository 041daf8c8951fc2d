"""The bot master webhook endpoint (HTTP only; ``bots.services.bot_signal_receive`` does the work), and the
customer API for bots and subscriptions (DRF, below it)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from bots import selectors, services
from bots.examples import bot_webhook_url
from bots.models import Bot, Subscription
from bots.services import bot_signal_receive
from brokers import selectors as broker_selectors
from brokers.models import BrokerAccount
from tradeflow.api_auth import STAFF_ONLY
from tradeflow.api_common import owned
from webhooks.services import Inbound
from webhooks.views import client_ip


@csrf_exempt
def master_webhook(request, webhook_path: str):
    """``POST /api/v1/bots/webhook/master/<path>``: a TradingView alert for every subscriber of one bot."""
    declared = int(request.META.get("CONTENT_LENGTH") or 0)
    try:
        body = request.body if declared <= settings.WEBHOOK_MAX_BODY_BYTES else b""
    except RequestDataTooBig:
        body = b""
    inbound = Inbound(request=request, method=request.method, path=request.path, body=body,
                      declared_length=declared, source_ip=client_ip(request))
    reply = bot_signal_receive(inbound, webhook_path=webhook_path)
    return JsonResponse(reply.body, status=reply.status, headers={"Allow": "POST"} if reply.status == 405 else None)


# --- customer API (``/api/v1/bots/``, ``/api/v1/subscriptions/``; routes in tradeflow/api_urls.py) -------------

class BotSerializer(serializers.ModelSerializer):
    """A bot as customers see it: no secret, no webhook path (only the operator sends alerts to it)."""

    class Meta:
        model = Bot
        fields = ["id", "name", "description", "market_type", "broker", "status", "default_leverage",
                  "default_margin", "margin_currency", "default_lots", "default_stop_loss_pct",
                  "default_take_profit_pct", "symbols", "created_at"]
        read_only_fields = fields


class BotCreateSerializer(serializers.ModelSerializer):
    class Meta:
        model = Bot
        fields = ["name", "description", "market_type", "broker", "webhook_path", "default_leverage",
                  "default_margin", "margin_currency", "default_lots", "default_stop_loss_pct",
                  "default_take_profit_pct", "symbols", "rate_limit", "max_lag_seconds"]


class BotSecretSerializer(serializers.Serializer):
    bot = BotSerializer()
    webhook_url = serializers.CharField()
    secret = serializers.CharField(help_text="The master secret: shown in this answer only")


def _bot_found(request, pk: int) -> Bot:
    return owned(selectors.bot_get, user=request.user, pk=pk)


class BotList(generics.ListAPIView):
    """Bots you can follow. POST (operators only) creates one and answers its master secret, once."""

    serializer_class = BotSerializer

    def get_queryset(self):
        return selectors.bot_list(user=self.request.user)

    def get_permissions(self):
        return [p() for p in STAFF_ONLY] if self.request.method == "POST" else super().get_permissions()

    @extend_schema(request=BotCreateSerializer, responses={201: BotSecretSerializer})
    def post(self, request):
        data = BotCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        bot, secret = services.bot_create(created_by=request.user, **data.validated_data)
        return Response(_with_secret(bot, secret), status=status.HTTP_201_CREATED)


def _with_secret(bot: Bot, secret: str) -> dict:
    return {"bot": BotSerializer(bot).data, "webhook_url": bot_webhook_url(bot), "secret": secret}


class BotDetail(generics.RetrieveAPIView):
    serializer_class = BotSerializer

    def get_object(self):
        return _bot_found(self.request, self.kwargs["pk"])


class _BotStatus(APIView):
    permission_classes = STAFF_ONLY
    change = staticmethod(services.bot_pause)

    @extend_schema(request=None, responses=BotSerializer)
    def post(self, request, pk: int):
        bot = get_object_or_404(Bot, pk=pk)  # operators act on any bot, archived ones included
        return Response(BotSerializer(self.change(bot=bot, actor=request.user)).data)


class BotPause(_BotStatus):
    """Operators only: alerts to a paused bot are refused (423) until it is resumed."""


class BotResume(_BotStatus):
    """Operators only: resume a paused bot."""

    change = staticmethod(services.bot_resume)


class BotRotateSecret(APIView):
    """Operators only: a new master secret; the old one stops working at once. Shown in this answer only."""

    permission_classes = STAFF_ONLY

    @extend_schema(request=None, responses=BotSecretSerializer)
    def post(self, request, pk: int):
        bot = get_object_or_404(Bot, pk=pk)
        return Response(_with_secret(bot, services.bot_rotate_secret(bot=bot, actor=request.user)))


class SubscriptionSerializer(serializers.ModelSerializer):
    bot_name = serializers.CharField(source="bot.name", read_only=True)

    class Meta:
        model = Subscription
        fields = ["id", "bot", "bot_name", "account", *services.OVERRIDES, *services.LIMITS, "status", "created_at",
                  "updated_at"]
        read_only_fields = ["id", "bot_name", "status", "created_at", "updated_at"]
        extra_kwargs = {"bot": {"queryset": Bot.objects.none()}, "account": {"queryset": BrokerAccount.objects.none()}}
        validators: list = []  # the service checks the rest and says which subscription is in the way

    def get_fields(self):
        # The choices are the caller's own accounts and the bots they can see: another customer's account id is
        # "does not exist", exactly like an id that does not exist.
        fields = super().get_fields()
        request = self.context.get("request")
        if request is not None and request.user.is_authenticated:
            fields["bot"].queryset = selectors.bot_list(user=request.user)
            fields["account"].queryset = broker_selectors.account_list(user=request.user)
        return fields


class SubscriptionList(generics.ListCreateAPIView):
    """Your bot subscriptions (ended ones are not listed). POST subscribes one of your accounts, with optional
    overrides (blank: the bot's default; 0 is a value, e.g. no stop loss) and limits."""

    serializer_class = SubscriptionSerializer
    queryset = Subscription.objects.none()  # for the schema; rows come from get_queryset

    def get_queryset(self):
        return selectors.subscription_list(user=self.request.user)

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        bot, account = data.pop("bot"), data.pop("account")
        settings_ = {k: v for k, v in data.items() if v is not None}
        serializer.instance = services.subscription_create(user=self.request.user, bot=bot, account=account,
                                                           **settings_)


class SubscriptionDetail(generics.RetrieveAPIView):
    serializer_class = SubscriptionSerializer

    def get_object(self):
        return owned(selectors.subscription_get, user=self.request.user, pk=self.kwargs["pk"])


class _SubscriptionAction(APIView):
    def act(self, request, subscription: Subscription) -> Subscription:
        raise NotImplementedError

    @extend_schema(request=None, responses=SubscriptionSerializer)
    def post(self, request, pk: int):
        subscription = owned(selectors.subscription_get, user=request.user, pk=pk)
        return Response(SubscriptionSerializer(self.act(request, subscription)).data)


class SubscriptionPause(_SubscriptionAction):
    """Pause: the bot's alerts (entries and exits) skip this account until resumed."""

    def act(self, request, subscription):
        return services.subscription_pause(subscription=subscription, actor=request.user)


class SubscriptionResume(_SubscriptionAction):
    def act(self, request, subscription):
        return services.subscription_resume(subscription=subscription, actor=request.user)


class UnsubscribeSerializer(serializers.Serializer):
    close_only = serializers.BooleanField(
        default=True, help_text="true: open nothing new but still run the bot's exits for its open positions; "
                                "false: end the subscription now")


class SubscriptionUnsubscribe(_SubscriptionAction):
    @extend_schema(request=UnsubscribeSerializer, responses=SubscriptionSerializer)
    def post(self, request, pk: int):
        return super().post(request, pk)

    def act(self, request, subscription):
        data = UnsubscribeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return services.subscription_unsubscribe(subscription=subscription, actor=request.user,
                                                 close_only=data.validated_data["close_only"])
