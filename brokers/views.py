from __future__ import annotations

import json
import secrets
from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.services import audit_record
from brokers import selectors
from brokers.forms import (
    OPTIONS_FORMS,
    BinanceConnectForm,
    KiteConnectForm,
    OrderFilterForm,
    PaperAccountForm,
    credentials_form,
)
from brokers.models import Broker, BrokerAccount, Position
from brokers.services import account_create, account_set_enabled, api_key_regenerate, connect, position_close
from webhooks.examples import webhook_examples
from webhooks.models import WebhookLog
from webhooks.selectors import webhook_log_list

NEW_KEY_SESSION = "new_webhook_key"


def _owned(getter, **kwargs):
    try:
        return getter(**kwargs)
    except (BrokerAccount.DoesNotExist, Position.DoesNotExist) as exc:
        raise Http404("Not found") from exc


def _owned_broker(request, pk: int, *brokers: str) -> BrokerAccount:
    account = _owned(selectors.account_get, user=request.user, pk=pk)
    if account.broker not in brokers:
        raise Http404("Not found")
    return account


def _show_key_once(request, account: BrokerAccount, key) -> None:
    request.session[NEW_KEY_SESSION] = {"account": account.pk, "key": key.raw}


def _saved(request, text: str, warnings: list[str]) -> None:
    messages.success(request, text)
    for warning in warnings:
        messages.warning(request, warning)


def _refused(form, exc: connect.ConnectError) -> None:
    form.add_error(exc.field if exc.field in form.fields else None, exc.message)


@login_required
def account_list(request):
    return render(request, "brokers/account_list.html", {"accounts": selectors.account_list(user=request.user)})


@login_required
def account_new(request):
    form = PaperAccountForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        account, key = account_create(owner=request.user, **form.cleaned_data)
        _show_key_once(request, account, key)
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
        "connection": connect.account_connection(account=account), "test_alert_body": test_alert_body(account),
    })


def test_alert_body(account: BrokerAccount) -> str:
    """The sample alert of the "send test alert" button: a small market buy carrying its price (a paper fill
    needs one), with an id of its own so pressing the button again is a new alert, not a duplicate."""
    binance = account.broker == Broker.BINANCE
    symbol, qty, price = ("BTCUSDT", "0.001", "60000") if binance else ("NIFTYBEES", "1", "265.40")
    return json.dumps({"version": "unify.v1", "id": f"test-{secrets.token_hex(4)}", "intent": {
        "side": "buy", "type": "market", "symbol": symbol, "qty": qty, "price": price}}, indent=2)


@login_required
@require_POST
def account_test_alert(request, pk: int):
    """The "send test alert" button without the key: the sample goes in as if TradingView had sent it."""
    from webhooks.services import test_alert_send

    account = _owned(selectors.account_get, user=request.user, pk=pk)
    if not account.is_paper:
        messages.error(request, "Test alerts go to paper accounts only: on a live account a sample is a real order.")
        return redirect("broker-account", pk=account.pk)
    reply = test_alert_send(account=account, body=test_alert_body(account), source_ip=request.META.get("REMOTE_ADDR"))
    if reply.status == 202:
        messages.success(request, "Test alert sent: it is in the webhook log and, once filled, on the dashboard.")
    else:
        messages.error(request, f"The test alert was refused: {reply.body['error']['message']}")
    return redirect("broker-account", pk=account.pk)


@login_required
@require_POST
def webhook_copied(request, pk: int):
    """The copy button was used: ticks the dashboard checklist's "copy webhook" step."""
    account = _owned(selectors.account_get, user=request.user, pk=pk)
    audit_record(user=request.user, action=selectors.ONBOARDING_COPIED, target=account.label)
    return HttpResponse(status=204)


@login_required
def kite_connect(request):
    form = KiteConnectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            connected = connect.kite_account_connect(owner=request.user, **form.cleaned_data)
        except connect.ConnectError as exc:  # e.g. the billing plan's broker limit
            _refused(form, exc)
        else:
            _show_key_once(request, connected.account, connected.key)
            messages.success(request, f"{connected.account.label} saved. Log in to Kite to finish connecting.")
            return redirect(connect.kite_login_redirect(account=connected.account, user=request.user))
    return render(request, "brokers/connect_kite.html", {
        "form": form, "redirect_url": settings.PUBLIC_URL + reverse("broker-kite-callback"),
    })


@login_required
def binance_connect(request):
    form = BinanceConnectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            connected = connect.binance_account_connect(owner=request.user, **form.cleaned_data)
        except connect.ConnectError as exc:
            _refused(form, exc)
        else:
            _show_key_once(request, connected.account, connected.key)
            _saved(request, f"{connected.account.label} connected: Binance accepted the key.", connected.warnings)
            return redirect("broker-account", pk=connected.account.pk)
    return render(request, "brokers/connect_binance.html", {"form": form})


@login_required
def kite_login(request, pk: int):
    account = _owned_broker(request, pk, Broker.KITE)
    return redirect(connect.kite_login_redirect(account=account, user=request.user))


@login_required
def kite_callback(request):
    """Kite's redirect after the customer logs in (the Redirect URL registered in their Kite Connect app)."""
    try:
        account = connect.kite_login_account(user=request.user, state=request.GET.get("state", ""))
    except connect.LoginStateInvalid as exc:
        return render(request, "brokers/kite_login_invalid.html", {"message": exc.message}, status=400)
    except BrokerAccount.DoesNotExist as exc:
        raise Http404("Not found") from exc
    try:
        connect.kite_login_complete(account=account, params=request.GET)
    except connect.ConnectError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Logged in to Kite: {account.label} can trade until tomorrow morning.")
    return redirect("broker-account", pk=account.pk)


@login_required
def account_options(request, pk: int):
    account = _owned_broker(request, pk, Broker.KITE, Broker.BINANCE)
    form = OPTIONS_FORMS[account.broker](request.POST or None, account=account)
    if request.method == "POST" and form.is_valid():
        try:
            warnings = connect.account_options_update(account=account, actor=request.user, **form.cleaned_data)
        except connect.ConnectError as exc:
            _refused(form, exc)
        else:
            _saved(request, "Options saved.", warnings)
            return redirect("broker-account", pk=account.pk)
    return render(request, "brokers/account_options.html", {"account": account, "form": form})


@login_required
def account_credentials(request, pk: int):
    account = _owned_broker(request, pk, Broker.KITE, Broker.BINANCE)
    form = credentials_form(account, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            warnings = connect.account_credentials_replace(account=account, actor=request.user, **form.cleaned_data)
        except connect.ConnectError as exc:
            _refused(form, exc)
        else:
            _saved(request, "New credentials saved.", warnings)
            if account.broker == Broker.KITE:  # a new key means a new Kite session
                return redirect(connect.kite_login_redirect(account=account, user=request.user))
            return redirect("broker-account", pk=account.pk)
    return render(request, "brokers/account_credentials.html", {"account": account, "form": form})


@login_required
@require_POST
def account_regenerate_key(request, pk: int):
    account = _owned(selectors.account_get, user=request.user, pk=pk)
    key = api_key_regenerate(account=account, actor=request.user)
    _show_key_once(request, account, key)
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


def _query_without_page(request) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


@login_required
def order_list(request):
    form = OrderFilterForm(request.GET, accounts=selectors.account_list(user=request.user))
    page = Paginator(selectors.order_list(user=request.user, **form.filters()), 50).get_page(request.GET.get("page"))
    return render(request, "brokers/order_list.html", {
        "page": page, "form": form, "filter_query": _query_without_page(request),
        "filtered": any(k != "page" for k in request.GET)})


@login_required
def execution_list(request):
    page = Paginator(selectors.execution_list(user=request.user), 50).get_page(request.GET.get("page"))
    return render(request, "brokers/execution_list.html", {"page": page})


@login_required
def webhook_log(request):
    page = Paginator(webhook_log_list(user=request.user), 50).get_page(request.GET.get("page"))
    return render(request, "brokers/webhook_log.html", {"page": page})


@login_required
def webhook_log_detail(request, pk: int):
    try:
        entry = webhook_log_list(user=request.user).select_related("signal").get(pk=pk)
    except WebhookLog.DoesNotExist as exc:
        raise Http404("Not found") from exc
    return render(request, "brokers/webhook_log_detail.html", {
        "entry": entry, "payload": _pretty(entry.payload), "response": json.dumps(entry.response, indent=2),
        "executions": selectors.execution_list(user=request.user).filter(signal_id=entry.signal_id)
        if entry.signal_id else []})


def _pretty(text: str) -> str:
    """The payload as received, indented when it is JSON (a text/plain alert often is)."""
    try:
        return json.dumps(json.loads(text), indent=2)
    except ValueError:
        return text


@staff_member_required
def admin_live(request):
    """Staff: executions streaming in from every customer, per-bot counters for today, the total open P&L."""
    start_of_day = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    positions = selectors.admin_open_positions()
    return render(request, "brokers/admin_live.html", {
        "executions": selectors.admin_executions_recent(),
        "bots": selectors.admin_bot_counters(since=start_of_day),
        "open_pnl": selectors.money_by_currency((cur, Decimal(pnl)) for pnl, cur in positions.values()),
        "open_count": len(positions),
        "positions": positions,
    })
