from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.forms import TradingSettingsForm
from accounts.models import ApiToken
from accounts.services import trading_settings_update
from accounts.token_forms import ApiTokenForm
from accounts.tokens import api_token_create, api_token_get, api_token_list, api_token_revoke
from brokers import selectors
from risk.selectors import trading_halted


@login_required
def dashboard(request):
    user = request.user
    accounts = list(selectors.account_list(user=user))
    positions = list(selectors.position_list(user=user))
    currency = accounts[0].currency if accounts else "INR"
    steps = selectors.onboarding_steps(user=user)
    start_of_day = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)  # the user's day
    return render(request, "accounts/dashboard.html", {
        "accounts": accounts,
        "positions": positions,
        "unrealized": sum((p.unrealized_pnl for p in positions), 0),
        "open_pnl": selectors.money_by_currency((p.account.currency, p.unrealized_pnl) for p in positions),
        "realized_today": selectors.realized_since(user=user, since=start_of_day),
        "currency": currency,
        "equity": selectors.equity_curve(user=user, currency=currency),
        "executions": selectors.execution_list(user=user)[:20],
        "onboarding": None if all(step["done"] for step in steps) else steps,
        "halted": trading_halted(),
    })


@login_required
def trading_settings(request):
    form = TradingSettingsForm(request.POST or None, instance=request.user.trading_settings)
    if request.method == "POST" and form.is_valid():
        trading_settings_update(user=request.user, ip=request.META.get("REMOTE_ADDR") or None, **form.cleaned_data)
        messages.success(request, "Trading settings saved.")
        return redirect("trading-settings")
    return render(request, "accounts/trading_settings.html", {"form": form})


NEW_TOKEN_SESSION = "new_api_token"


@login_required
def api_tokens(request):
    """Settings → API tokens: create (the raw token is shown on the next page load only), list, revoke."""
    form = ApiTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        new = api_token_create(owner=request.user, name=form.cleaned_data["name"],
                               read_only=form.cleaned_data["read_only"], expires_at=form.expires_at())
        request.session[NEW_TOKEN_SESSION] = {"name": new.record.name, "raw": new.raw}
        return redirect("api-tokens")
    return render(request, "accounts/api_tokens.html", {
        "form": form, "tokens": api_token_list(user=request.user), "now": timezone.now(),
        "new_token": request.session.pop(NEW_TOKEN_SESSION, None),  # shown once, then only the prefix
        "api_root": request.build_absolute_uri(reverse("api-schema")).removesuffix("schema/"),
    })


@login_required
@require_POST
def api_token_revoke_view(request, pk: int):
    try:
        token = api_token_get(user=request.user, pk=pk)
    except ApiToken.DoesNotExist as exc:
        raise Http404("Not found") from exc
    api_token_revoke(token=token, actor=request.user)
    messages.success(request, f"Token “{token.name}” revoked: programs using it now get 401.")
    return redirect("api-tokens")
