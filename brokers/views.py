from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from brokers import selectors
from brokers.forms import PaperAccountForm
from brokers.models import BrokerAccount, Position
from brokers.services import account_create, account_set_enabled, api_key_regenerate, position_close
from webhooks.examples import webhook_examples
from webhooks.selectors import webhook_log_list

NEW_KEY_SESSION = "new_webhook_key"


def _owned(getter, **kwargs):
    try:
        return getter(**kwargs)
    except (BrokerAccount.DoesNotExist, Position.DoesNotExist) as exc:
        raise Http404("Not found") from exc


@login_required
def account_list(request):
    return render(request, "brokers/account_list.html", {"accounts": selectors.account_list(user=request.user)})


@login_required
def account_new(request):
    form = PaperAccountForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        account, key = account_create(owner=request.user, **form.cleaned_data)
        request.session[NEW_KEY_SESSION] = {"account": account.pk, "key": key.raw}
        messages.success(request, f"Paper account {account.label} created. Copy its webhook URL now.")
        return redirect("broker-account", pk=account.pk)
    return render(request, "brokers/account_new.html", {"form": form})


@login_required
def account_detail(request, pk: int):
    account = _owned(selectors.account_get, user=request.user, pk=pk)
    shown = request.session.get(NEW_KEY_SESSION)
    raw_key = None
    if shown and shown.get("account") == account.pk:
        raw_key = shown["key"]
        del request.session[NEW_KEY_SESSION]  # shown once, then only masked
    return render(request, "brokers/account_detail.html", {
        "account": account, "raw_key": raw_key, "examples": webhook_examples(account=account, raw_key=raw_key),
    })


@login_required
@require_POST
def account_regenerate_key(request, pk: int):
    account = _owned(selectors.account_get, user=request.user, pk=pk)
    key = api_key_regenerate(account=account, actor=request.user)
    request.session[NEW_KEY_SESSION] = {"account": account.pk, "key": key.raw}
    messages.warning(request, "New webhook key created; the old one no longer works. Update your TradingView alerts.")
    return redirect("broker-account", pk=account.pk)


@login_required
@require_POST
def account_toggle(request, pk: int):
    account = _owned(selectors.account_get, user=request.user, pk=pk)
    account_set_enabled(account=account, enabled=not account.enabled, actor=request.user)
    messages.info(request, f"{account.label} is now {'enabled' if account.enabled else 'disabled'}.")
    return redirect("broker-account", pk=account.pk)


@login_required
def position_list(request):
    return render(request, "brokers/position_list.html", {
        "positions": selectors.position_list(user=request.user),
        "closed": selectors.position_list(user=request.user, status=Position.Status.CLOSED)[:50],
    })


@login_required
@require_POST
def position_close_view(request, pk: int):
    position = _owned(selectors.position_get, user=request.user, pk=pk)
    if position.status != Position.Status.OPEN:
        messages.error(request, f"{position.symbol} is already closed.")
    else:
        position_close(position=position, actor=request.user)
        messages.success(request, f"Closing {position.symbol} at market.")
    return redirect("positions")


@login_required
def order_list(request):
    page = Paginator(selectors.order_list(user=request.user), 50).get_page(request.GET.get("page"))
    return render(request, "brokers/order_list.html", {"page": page})


@login_required
def execution_list(request):
    page = Paginator(selectors.execution_list(user=request.user), 50).get_page(request.GET.get("page"))
    return render(request, "brokers/execution_list.html", {"page": page})


@login_required
def webhook_log(request):
    page = Paginator(webhook_log_list(user=request.user), 50).get_page(request.GET.get("page"))
    return render(request, "webhooks/log_list.html", {"page": page})
