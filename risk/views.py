from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from brokers import selectors as broker_selectors
from brokers.models import BrokerAccount
from risk.forms import LiveSwitchForm, RiskConfigForm
from risk.selectors import risk_config_get
from risk.services import risk_config_update
from risk.stops import (
    LiveSwitchRefused,
    account_switch_to_live,
    account_switch_to_paper,
    emergency_stop,
    square_off_all,
    stop_summary,
)


def _json(result: dict) -> JsonResponse:
    return JsonResponse({**result, "total_pnl": str(result["total_pnl"])})


@login_required
def risk_settings(request):
    form = RiskConfigForm(request.POST or None, instance=risk_config_get(user=request.user))
    if request.method == "POST" and form.is_valid():
        risk_config_update(user=request.user, actor=request.user, **form.cleaned_data)
        messages.success(request, "Risk rules saved: they apply to the next entry signal.")
        return redirect("risk-settings")
    return render(request, "risk/settings.html", {"form": form})


@login_required
@require_POST
def emergency_stop_view(request):
    result = emergency_stop(user=request.user, ip=request.META.get("REMOTE_ADDR"))
    if request.headers.get("Accept", "").startswith("application/json"):
        return _json(result)
    level = messages.error if result["errors"] else messages.warning
    level(request, f"Emergency stop executed. {stop_summary(result)} Re-enable accounts to resume trading.")
    return redirect("dashboard")


@login_required
@require_POST
def square_off_all_view(request):
    result = square_off_all(user=request.user, ip=request.META.get("REMOTE_ADDR"))
    if request.headers.get("Accept", "").startswith("application/json"):
        return _json(result)
    (messages.error if result["errors"] else messages.success)(request, f"Square off all: {stop_summary(result)}")
    return redirect("positions")


@login_required
@require_POST
def account_mode(request, pk: int):
    try:
        account = broker_selectors.account_get(user=request.user, pk=pk)
    except BrokerAccount.DoesNotExist as exc:
        raise Http404("Not found") from exc
    ip = request.META.get("REMOTE_ADDR")
    if request.POST.get("mode") == "paper":
        account_switch_to_paper(account=account, actor=request.user, ip=ip)
        messages.info(request, f"{account.label} is back on paper.")
        return redirect("broker-account", pk=account.pk)
    form = LiveSwitchForm(request.POST)
    try:
        account_switch_to_live(account=account, actor=request.user, ip=ip,
                               confirmed=form.is_valid() and form.cleaned_data["confirm"])
    except LiveSwitchRefused as exc:
        messages.error(request, exc.message)
    else:
        messages.warning(request, f"{account.label} is now LIVE: signals place real orders.")
    return redirect("broker-account", pk=account.pk)
