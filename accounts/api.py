"""Customer API for the caller's own trading settings (``/api/v1/settings/trading/``)."""

from __future__ import annotations

from rest_framework import generics, serializers

from accounts.forms import TradingSettingsForm
from accounts.models import TradingSettings
from accounts.services import trading_settings_update


class TradingSettingsSerializer(serializers.ModelSerializer):
    class Meta:
        model = TradingSettings
        fields = [*TradingSettingsForm.Meta.fields, "updated_at"]
        read_only_fields = ["updated_at"]


class TradingSettingsView(generics.RetrieveUpdateAPIView):
    """Default lots, auto-trade on/off, options hedge and timezone. PUT replaces, PATCH changes some.
    Saved like the settings page saves them, changes recorded in the audit log."""

    serializer_class = TradingSettingsSerializer

    def get_object(self):
        return TradingSettings.objects.get_or_create(user=self.request.user)[0]

    def perform_update(self, serializer):
        serializer.instance = trading_settings_update(user=self.request.user,
                                                      ip=self.request.META.get("REMOTE_ADDR") or None,
                                                      **serializer.validated_data)
