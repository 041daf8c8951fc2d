"""Customer API for the caller's own trading settings (``/api/v1/settings/trading/``)."""

from __future__ import annotations

from rest_framework import generics, serializers

from accounts.forms import TradingSettingsForm
from accounts.models import TradingSettings


class TradingSettingsSerializer(serializers.ModelSerializer):
    class Meta:
        model = TradingSettings
        fields = [*TradingSettingsForm.Meta.fields, "updated_at"]
        read_only_fields = ["updated_at"]


class TradingSettingsView(generics.RetrieveUpdateAPIView):
    """Default lots, auto-trade on/off, options hedge and timezone. PUT replaces, PATCH changes some.
    Saved like the settings page saves them (there is no service: a plain model update)."""

    serializer_class = TradingSettingsSerializer

    def get_object(self):
        return TradingSettings.objects.get_or_create(user=self.request.user)[0]
