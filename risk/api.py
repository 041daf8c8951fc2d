"""Customer API for risk rules, Emergency Stop and square-off-all; the operators' kill switch.

Every write goes through ``risk.services`` / ``risk.stops``, the same functions the pages call.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from risk.forms import RiskConfigForm
from risk.models import RiskConfig, TradingHalt
from risk.selectors import risk_config_get, trading_halt_current
from risk.services import risk_config_update, trading_halt_set
from risk.stops import emergency_stop, square_off_all
from tradeflow.api_auth import STAFF_ONLY


@extend_schema_field({"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?$",
                     "example": "09:15", "description": "Wall-clock time in `trading_hours_timezone` (no offset)"})
class LocalTimeField(serializers.TimeField):
    """A time of day without an offset. (OpenAPI's ``format: time`` means RFC 3339 time *with* an offset.)"""


class RiskConfigSerializer(serializers.ModelSerializer):
    trading_hours_start = LocalTimeField(required=False)
    trading_hours_end = LocalTimeField(required=False)

    class Meta:
        model = RiskConfig
        fields = [*RiskConfigForm.Meta.fields, "updated_at"]
        read_only_fields = ["updated_at"]

    def validate_trading_days(self, value: str) -> str:
        parts = [d for d in value.replace(" ", "").split(",") if d]
        if any(not d.isdigit() or int(d) > 6 for d in parts):
            raise serializers.ValidationError("Use weekday numbers 0 (Monday) to 6 (Sunday), comma separated: "
                                              "0,1,2,3,4")
        return ",".join(parts)


class RiskConfigView(generics.RetrieveUpdateAPIView):
    """Your risk rules (entries only: exits are never blocked). PUT replaces them, PATCH changes some."""

    serializer_class = RiskConfigSerializer

    def get_object(self):
        return risk_config_get(user=self.request.user)

    def perform_update(self, serializer):
        serializer.instance = risk_config_update(user=self.request.user, actor=self.request.user,
                                                 **serializer.validated_data)


class StopResultSerializer(serializers.Serializer):
    positions_closed = serializers.IntegerField()
    total_pnl = serializers.DecimalField(max_digits=28, decimal_places=8)
    errors = serializers.ListField(child=serializers.CharField(), help_text="Closes that failed (they are retried)")


def _ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


class EmergencyStop(APIView):
    """Disable every one of your accounts and close every open position at market. Accounts stay disabled until
    you enable them again."""

    @extend_schema(request=None, responses=StopResultSerializer)
    def post(self, request):
        return Response(StopResultSerializer(emergency_stop(user=request.user, ip=_ip(request))).data)


class SquareOffAll(APIView):
    """Close every open position at market; accounts stay enabled."""

    @extend_schema(request=None, responses=StopResultSerializer)
    def post(self, request):
        return Response(StopResultSerializer(square_off_all(user=request.user, ip=_ip(request))).data)


class KillSwitchSerializer(serializers.ModelSerializer):
    halted = serializers.BooleanField()
    reason = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")
    actor = serializers.EmailField(source="actor.email", read_only=True, default=None, allow_null=True)
    created_at = serializers.DateTimeField(read_only=True, allow_null=True, help_text="null: never switched")

    class Meta:
        model = TradingHalt
        fields = ["halted", "reason", "actor", "created_at"]


class KillSwitch(APIView):
    """Operators only: the global kill switch. While halted, signals are acknowledged and logged but nothing
    trades; manual closes and Emergency Stop still run."""

    permission_classes = STAFF_ONLY

    @extend_schema(responses=KillSwitchSerializer)
    def get(self, request):
        current = trading_halt_current() or TradingHalt(halted=False)
        return Response(KillSwitchSerializer(current).data)

    @extend_schema(request=KillSwitchSerializer, responses={201: KillSwitchSerializer})
    def post(self, request):
        data = KillSwitchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row = trading_halt_set(halted=data.validated_data["halted"], reason=data.validated_data.get("reason", ""),
                               actor=request.user)
        return Response(KillSwitchSerializer(row).data, status=status.HTTP_201_CREATED)
