from django import forms

from accounts.models import TradingSettings


class TradingSettingsForm(forms.ModelForm):
    class Meta:
        model = TradingSettings
        fields = ["default_lots", "auto_trade", "hedge_pct", "hedge_strike_offset", "timezone"]
