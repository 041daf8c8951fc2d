from __future__ import annotations

from decimal import Decimal

from django import forms


class PaperAccountForm(forms.Form):
    label = forms.CharField(max_length=80, initial="Paper account")
    currency = forms.ChoiceField(choices=[("INR", "INR"), ("USD", "USD"), ("USDT", "USDT")], initial="INR")
    paper_capital = forms.DecimalField(min_value=Decimal("1"), max_digits=16, decimal_places=2,
                                       initial=Decimal("1000000"), help_text="Starting cash of the paper account")
