from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from accounts.forms import TradingSettingsForm
from brokers import selectors
from risk.selectors import trading_halted


@login_required
def dashboard(request):
    positions = list(selectors.position_list(user=request.user))
    return render(request, "accounts/dashboard.html", {
        "accounts": selectors.account_list(user=request.user),
        "positions": positions,
        "unrealized": sum((p.unrealized_pnl for p in positions), 0),
        "executions": selectors.execution_list(user=request.user)[:20],
        "halted": trading_halted(),
    })


@login_required
def trading_settings(request):
    form = TradingSettingsForm(request.POST or None, instance=request.user.trading_settings)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Trading settings saved.")
        return redirect("trading-settings")
    return render(request, "accounts/trading_settings.html", {"form": form})
