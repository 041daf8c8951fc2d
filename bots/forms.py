from __future__ import annotations

from django import forms

from bots.models import Subscription
from bots.selectors import subscribable_accounts


class SubscribeForm(forms.ModelForm):
    """Subscribe one of my accounts; every override left blank takes the bot's default."""

    class Meta:
        model = Subscription
        fields = ["account", "margin", "leverage", "lots", "stop_loss_pct", "take_profit_pct", "max_daily_loss",
                  "max_concurrent_positions"]
        labels = {"stop_loss_pct": "Stop loss %", "take_profit_pct": "Take profit %"}
        help_texts = {"margin": "Blank: the bot's default", "leverage": "Blank: the bot's default (futures only)",
                      "lots": "Blank: the bot's default (options only)",
                      "stop_loss_pct": "Blank: the bot's default; 0: no stop loss",
                      "take_profit_pct": "Blank: the bot's default; 0: no take profit"}

    def __init__(self, *args, user, bot, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["account"].queryset = subscribable_accounts(user=user, bot=bot)
        self.fields["account"].empty_label = None

    def settings(self) -> dict:
        return {k: v for k, v in self.cleaned_data.items() if k != "account" and v is not None}

    def validate_unique(self):  # the service says which subscription is in the way
        return None
