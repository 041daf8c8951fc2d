from django import forms

from risk.models import RiskConfig


class CalendarImportForm(forms.Form):
    file = forms.FileField(help_text="A .csv (time, market, impact, title) or an .ics calendar")


class RiskConfigForm(forms.ModelForm):
    class Meta:
        model = RiskConfig
        fields = ["enabled", "max_daily_loss", "flatten_on_daily_loss", "max_trades_per_day", "max_open_positions",
                  "max_position_value", "trading_hours_enabled", "trading_hours_start", "trading_hours_end",
                  "trading_hours_timezone", "trading_days", "denied_instruments", "allowed_instruments",
                  "news_lockout_enabled", "news_minutes_before", "news_minutes_after", "news_markets"]
        widgets = {"denied_instruments": forms.Textarea(attrs={"rows": 2}),
                   "allowed_instruments": forms.Textarea(attrs={"rows": 2})}

    def clean_trading_days(self):
        days = self.cleaned_data["trading_days"].replace(" ", "")
        parts = [d for d in days.split(",") if d]
        if any(not d.isdigit() or int(d) > 6 for d in parts):
            raise forms.ValidationError("Use weekday numbers 0 (Monday) to 6 (Sunday), comma separated: 0,1,2,3,4")
        return ",".join(parts)


class LiveSwitchForm(forms.Form):
    confirm = forms.BooleanField(required=False, label="I understand live orders use real money at my broker")
