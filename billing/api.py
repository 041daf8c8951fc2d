"""``GET /api/v1/billing/``: the caller's plan, status, trial days left and trades used against the limit."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.services import usage_get


class BillingSerializer(serializers.Serializer):
    plan = serializers.CharField(help_text="Slug of the plan whose limits apply now")
    plan_name = serializers.CharField()
    status = serializers.CharField(help_text="trialing, active, past_due or canceled")
    on_trial = serializers.BooleanField()
    trial_ends_at = serializers.DateTimeField(allow_null=True)
    trial_days_left = serializers.IntegerField(allow_null=True)
    trades_used = serializers.IntegerField(help_text="In the trial, or this calendar month (UTC) on a paid plan")
    trades_limit = serializers.IntegerField(allow_null=True, help_text="null: unlimited")
    current_period_end = serializers.DateTimeField(allow_null=True)
    cancel_at_period_end = serializers.BooleanField()
    blocked = serializers.CharField(allow_null=True, help_text="Why new entries are refused now, if they are")
    warning = serializers.CharField(allow_null=True)


class BillingView(APIView):
    @extend_schema(responses=BillingSerializer, summary="Plan, trial and usage")
    def get(self, request):
        usage = usage_get(user=request.user)
        account = usage.account
        return Response(BillingSerializer({
            "plan": usage.plan.slug, "plan_name": usage.plan.name, "status": usage.status,
            "on_trial": usage.on_trial, "trial_ends_at": usage.trial_ends_at, "trial_days_left": usage.trial_days_left,
            "trades_used": usage.trades_used, "trades_limit": usage.trades_limit,
            "current_period_end": account.current_period_end, "cancel_at_period_end": account.cancel_at_period_end,
            "blocked": usage.blocked, "warning": usage.warning}).data)
