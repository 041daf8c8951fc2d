"""Billing pages: plans and usage, Stripe Checkout and portal redirects, the Stripe webhook receiver."""

from __future__ import annotations

import logging

import stripe
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import payments, selectors
from billing.services import usage_get

log = logging.getLogger(__name__)
STRIPE_DOWN = "Stripe could not be reached just now: nothing was charged. Try again in a minute."


@login_required
def billing_page(request):
    return render(request, "billing/billing.html", {
        "usage": usage_get(user=request.user), "plans": selectors.plan_list_for_sale(),
        "configured": payments.stripe_configured()})


@login_required
@require_POST
def checkout(request, slug: str):
    plan = selectors.plan_for_sale(slug=slug)
    if plan is None or not payments.stripe_configured():
        messages.error(request, "This plan cannot be bought here: billing is not configured on this server.")
        return redirect("billing")
    try:
        url = payments.checkout_session_create(
            user=request.user, plan=plan, success_url=request.build_absolute_uri(reverse("billing-success")),
            cancel_url=request.build_absolute_uri(reverse("billing-cancel")))
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect("billing")
    except stripe.StripeError:
        log.exception("checkout session for %s failed", request.user)
        messages.error(request, STRIPE_DOWN)
        return redirect("billing")
    return redirect(url)


@login_required
@require_POST
def portal(request):
    try:
        url = payments.portal_session_create(user=request.user, return_url=request.build_absolute_uri(
            reverse("billing")))
    except (ValueError, payments.BillingNotConfigured) as exc:
        messages.error(request, str(exc))
        return redirect("billing")
    except stripe.StripeError:
        log.exception("portal session for %s failed", request.user)
        messages.error(request, STRIPE_DOWN)
        return redirect("billing")
    return redirect(url)


@login_required
def checkout_success(request):
    session_id = request.GET.get("session_id", "")
    if session_id and payments.stripe_configured():
        try:
            payments.checkout_session_sync(user=request.user, session_id=session_id)
        except stripe.StripeError:
            log.warning("checkout session %s not synced; its webhook will", session_id, exc_info=True)
    return render(request, "billing/success.html", {"usage": usage_get(user=request.user)})


@login_required
def checkout_cancel(request):
    return render(request, "billing/cancel.html")


@csrf_exempt
@require_POST
def stripe_webhook(request):
    """``POST /billing/stripe/webhook/``: Stripe's signed events. 400 for anything not signed by Stripe."""
    try:
        outcome = payments.webhook_receive(payload=request.body,
                                           signature=request.headers.get("Stripe-Signature", ""))
    except payments.WebhookRejected as exc:
        return JsonResponse({"error": {"code": "invalid_signature", "message": str(exc), "fields": {}}}, status=400)
    return HttpResponse(outcome, content_type="text/plain")
