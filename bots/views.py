from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from bots import selectors, services
from bots.examples import bot_curl, bot_examples
from bots.forms import SubscribeForm
from bots.models import Bot, Subscription

ADMIN_SECRET_SESSION = "new_bot_secret"
ACTIONS = {"pause": services.subscription_pause, "resume": services.subscription_resume,
           "close_only": lambda **kw: services.subscription_unsubscribe(close_only=True, **kw),
           "unsubscribe": lambda **kw: services.subscription_unsubscribe(close_only=False, **kw)}


def _found(getter, **kwargs):
    try:
        return getter(**kwargs)
    except (Bot.DoesNotExist, Subscription.DoesNotExist) as exc:
        raise Http404("Not found") from exc


@login_required
def bot_list(request):
    mine = {s.bot_id for s in selectors.subscription_list(user=request.user)}
    return render(request, "bots/bot_list.html", {"bots": selectors.bot_list(user=request.user), "mine": mine})


@login_required
def bot_detail(request, pk: int):
    bot = _found(selectors.bot_get, user=request.user, pk=pk)
    return render(request, "bots/bot_detail.html", {
        "bot": bot, "subscriptions": selectors.subscription_list(user=request.user, bot=bot),
        "record": selectors.bot_track_record(bot=bot)})


@login_required
def subscribe(request, pk: int):
    bot = _found(selectors.bot_get, user=request.user, pk=pk)
    form = SubscribeForm(request.POST or None, user=request.user, bot=bot)
    if request.method == "POST" and form.is_valid():
        try:
            services.subscription_create(user=request.user, bot=bot, account=form.cleaned_data["account"],
                                         **form.settings())
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Subscribed to {bot.name}: its next alert trades on your account.")
            return redirect("bot-subscriptions")
    return render(request, "bots/subscribe.html", {"bot": bot, "form": form})


@login_required
def subscription_list(request):
    return render(request, "bots/subscription_list.html",
                  {"subscriptions": selectors.subscription_list(user=request.user)})


@login_required
@require_POST
def subscription_action(request, pk: int, action: str):
    subscription = _found(selectors.subscription_get, user=request.user, pk=pk)
    if action not in ACTIONS:
        raise Http404("Not found")
    try:
        ACTIONS[action](subscription=subscription, actor=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{subscription.bot.name}: {subscription.get_status_display()}.")
    return redirect("bot-subscriptions")


@staff_member_required
def bot_admin_page(request, pk: int):
    """The operator's copy-ready setup: webhook URL and TradingView message (secret only right after it is made)."""
    bot = get_object_or_404(Bot, pk=pk)
    shown = request.session.pop(ADMIN_SECRET_SESSION, None) or {}
    secret = shown.get("secret") if shown.get("bot") == bot.pk else None
    return render(request, "bots/admin_page.html", {
        "bot": bot, "examples": bot_examples(bot, secret=secret),
        "curl": bot_curl(bot, secret=secret) if secret else "",
        "signals": selectors.bot_signal_list(bot=bot)[:20], "subscribers": selectors.bot_subscriber_count(bot=bot)})


def remember_secret(request, bot: Bot, secret: str) -> None:
    request.session[ADMIN_SECRET_SESSION] = {"bot": bot.pk, "secret": secret}
