"""The form of the API tokens page (Settings → API tokens)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.utils import timezone

EXPIRY_CHOICES = [("", "Never"), ("7", "In 7 days"), ("30", "In 30 days"), ("90", "In 90 days"),
                  ("365", "In a year")]


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="What uses it, e.g. “backtest script” or “home server”")
    read_only = forms.BooleanField(required=False, label="Read-only",
                                   help_text="Can read accounts, positions and orders but change nothing")
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, label="Expires")

    def expires_at(self) -> datetime | None:
        days = self.cleaned_data.get("expires_in")
        return timezone.now() + timedelta(days=int(days)) if days else None
