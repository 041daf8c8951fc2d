"""Stripe: Checkout and the customer portal going out, signed webhook events coming in.

Events arrive at least once and in any order (FACTS.md "Stripe"). Each is stored once by its id in the same
transaction as its effect, so a redelivery changes nothing and a failed handler is retried by Stripe. Effects
never trust event order: subscription events re-read the subscription from Stripe and apply its current state,
and every state change carries the time it describes (``stripe_synced_at``) so an older event arriving late is
ignored. A canceled subscription is final in Stripe, so nothing revives it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import stripe
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import BillingAccount, Plan, StripeEvent
from billing.services import billing_account_get

log = logging.getLogger(__name__)
ACTIVE, PAST_DUE, CANCELED = (BillingAccount.Status.ACTIVE, BillingAccount.Status.PAST_DUE,
                              BillingAccount.Status.CANCELED)
# Stripe subscription status → ours. ``incomplete`` (first payment not done yet) changes nothing.
STATUS_MAP = {"active": ACTIVE, "trialing": ACTIVE, "past_due": PAST_DUE, "unpaid": PAST_DUE,
              "canceled": CANCELED, "incomplete_expired": CANCELED}


class BillingNotConfigured(Exception):
    pass


class WebhookRejected(Exception):
    """The request is not a genuine Stripe event (bad or missing signature, stale timestamp, not JSON)."""


def stripe_configured() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def _client() -> stripe.StripeClient:
    if not stripe_configured():
        raise BillingNotConfigured("Billing is not configured on this server (STRIPE_SECRET_KEY is not set).")
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE},
                               max_network_retries=2)


def _ts(value) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


# --- going out: customer, Checkout, portal ---------------------------------------------------------------------

def customer_ensure(*, account: BillingAccount) -> str:
    if account.stripe_customer_id:
        return account.stripe_customer_id
    customer = _client().v1.customers.create(
        params={"email": account.user.email, "metadata": {"user_id": str(account.user_id)}},
        options={"idempotency_key": f"tradeflow-customer-{account.user_id}"})
    BillingAccount.objects.filter(pk=account.pk, stripe_customer_id="").update(stripe_customer_id=customer.id)
    account.refresh_from_db(fields=["stripe_customer_id"])
    return account.stripe_customer_id


def checkout_session_create(*, user, plan: Plan, success_url: str, cancel_url: str) -> str:
    """A Stripe Checkout session (subscription mode) for ``plan``; returns the URL to send the browser to."""
    if plan.is_trial or not plan.stripe_price_id:
        raise ValueError(f"{plan.name} cannot be bought: it has no Stripe price")
    account = billing_account_get(user=user)
    if account.stripe_subscription_id and account.status in (ACTIVE, PAST_DUE):
        # A second Checkout would start a second subscription, billed on top of the first.
        raise ValueError("You already have a subscription: change plan or card in the customer portal")
    customer = customer_ensure(account=account)
    session = _client().v1.checkout.sessions.create(params={
        "mode": "subscription", "customer": customer, "client_reference_id": str(user.pk),
        "line_items": [{"price": plan.stripe_price_id, "quantity": 1}],
        "success_url": success_url + "?session_id={CHECKOUT_SESSION_ID}", "cancel_url": cancel_url,
        "metadata": {"user_id": str(user.pk), "plan": plan.slug},
        "subscription_data": {"metadata": {"user_id": str(user.pk), "plan": plan.slug}},
    })
    return session.url


def portal_session_create(*, user, return_url: str) -> str:
    """The Stripe customer portal (card changes, invoices, cancellation) for a user who has a Stripe customer."""
    account = billing_account_get(user=user)
    if not account.stripe_customer_id:
        raise ValueError("No subscription yet: choose a plan first")
    session = _client().v1.billing_portal.sessions.create(
        params={"customer": account.stripe_customer_id, "return_url": return_url})
    return session.url


def checkout_session_sync(*, user, session_id: str) -> BillingAccount:
    """The success page: apply a completed Checkout at once instead of waiting for its webhook (the webhook,
    when it comes, finds the same state and changes nothing). Someone else's session changes nothing."""
    session = _client().v1.checkout.sessions.retrieve(session_id).to_dict()
    account = billing_account_get(user=user)
    if session.get("client_reference_id") != str(user.pk) or session.get("status") != "complete":
        return account
    with transaction.atomic():
        account = BillingAccount.objects.select_for_update().select_related("plan").get(pk=account.pk)
        _checkout_completed(account, session, as_of=timezone.now())
    return account


# --- coming in: signed events ----------------------------------------------------------------------------------

def webhook_receive(*, payload: bytes, signature: str) -> str:
    """Verify a Stripe webhook exactly as Stripe specifies (``t=…,v1=HMAC-SHA256(secret, "t.payload")``, at most
    ``STRIPE_WEBHOOK_TOLERANCE`` seconds old) and process it once. Returns what was done."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("Billing is not configured: STRIPE_WEBHOOK_SECRET is not set")
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, signature, secret, settings.STRIPE_WEBHOOK_TOLERANCE)
        event = json.loads(text)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
        raise WebhookRejected(f"Not a valid Stripe event: {exc}") from exc
    if not isinstance(event, dict) or not event.get("id") or not isinstance(event.get("data"), dict):
        raise WebhookRejected("Not a Stripe event: id and data are required")
    return event_process(event=event)


HANDLED = ("checkout.session.completed", "customer.subscription.created", "customer.subscription.updated",
           "customer.subscription.deleted", "invoice.payment_failed", "invoice.paid")


@transaction.atomic
def event_process(*, event: dict) -> str:
    created = _ts(event.get("created")) or timezone.now()
    row, new = StripeEvent.objects.get_or_create(id=event["id"], defaults={
        "type": event.get("type", ""), "created": created, "payload": event})
    if not new:
        return "duplicate: already processed"
    kind, obj = event.get("type", ""), event["data"].get("object") or {}
    if kind not in HANDLED:
        outcome = "ignored: not a billing event"
    else:
        account = _account_for(obj, kind)
        if account is None:
            outcome = "ignored: no TradeFlow user for this customer"
        elif kind == "checkout.session.completed":
            outcome = _checkout_completed(account, obj, as_of=created)
        elif kind.startswith("customer.subscription."):
            outcome = _subscription_event(account, obj, as_of=created, deleted=kind.endswith("deleted"))
        else:
            outcome = _invoice_event(account, obj, as_of=created, paid=kind == "invoice.paid")
    row.outcome = outcome[:200]
    row.save(update_fields=["outcome"])
    log.info("stripe event %s %s: %s", event["id"], kind, outcome)
    return outcome


def _invoice_subscription(invoice: dict) -> str:
    # API versions from 2025 move it under parent.subscription_details.
    sub = invoice.get("subscription") or (
        ((invoice.get("parent") or {}).get("subscription_details") or {}).get("subscription"))
    return sub["id"] if isinstance(sub, dict) else (sub or "")


def _account_for(obj: dict, kind: str) -> BillingAccount | None:
    """The billing record an event is about, locked for the rest of the transaction."""
    rows = BillingAccount.objects.select_for_update().select_related("plan")
    user_id = obj.get("client_reference_id") if kind == "checkout.session.completed" else None
    user_id = user_id or (obj.get("metadata") or {}).get("user_id")
    sub_id = obj.get("id") if kind.startswith("customer.subscription.") else _invoice_subscription(obj)
    customer = obj.get("customer")
    customer = customer.get("id") if isinstance(customer, dict) else customer
    for lookup in ({"stripe_subscription_id": sub_id} if sub_id else None,
                   {"stripe_customer_id": customer} if customer else None,
                   {"user_id": user_id} if user_id and str(user_id).isdigit() else None):
        if lookup:
            found = rows.filter(**lookup).order_by("pk").first()
            if found is not None:
                return found
    return None


def _checkout_completed(account: BillingAccount, session: dict, *, as_of: datetime) -> str:
    sub_id = session.get("subscription")
    sub_id = sub_id.get("id") if isinstance(sub_id, dict) else sub_id
    if session.get("mode") != "subscription" or not sub_id:
        return "ignored: not a subscription checkout"
    if session.get("customer"):
        account.stripe_customer_id = session["customer"]
    return _subscription_event(account, {"id": sub_id}, as_of=as_of, deleted=False, fetch=True)


def _subscription_event(account: BillingAccount, sub: dict, *, as_of: datetime, deleted: bool,
                        fetch: bool | None = None) -> str:
    if account.stripe_subscription_id == sub["id"] and account.status == CANCELED:
        return "ignored: this subscription has ended"
    if account.stripe_subscription_id not in ("", sub["id"]) and account.status in (ACTIVE, PAST_DUE):
        return "ignored: not the customer's current subscription"
    if not deleted and (fetch or stripe_configured()):
        # The current state, whatever order the events came in.
        try:
            sub = _client().v1.subscriptions.retrieve(sub["id"]).to_dict()
        except stripe.InvalidRequestError as exc:
            if getattr(exc, "http_status", None) != 404:
                raise
            sub = {**sub, "status": "canceled"}  # gone at Stripe
        as_of = max(as_of, timezone.now().replace(microsecond=0))
    return _subscription_apply(account, sub, as_of=as_of, deleted=deleted)


def _price_of(sub: dict) -> str:
    items = ((sub.get("items") or {}).get("data")) or [{}]
    item = items[0] or {}
    price = item.get("price") or item.get("plan") or sub.get("plan") or {}
    return price.get("id", "") if isinstance(price, dict) else str(price)


def _period_end(sub: dict) -> datetime | None:
    # Newer API versions keep the period on the subscription item.
    items = ((sub.get("items") or {}).get("data")) or [{}]
    return _ts(sub.get("current_period_end") or (items[0] or {}).get("current_period_end"))


def _subscription_apply(account: BillingAccount, sub: dict, *, as_of: datetime, deleted: bool) -> str:
    if account.stripe_synced_at and as_of < account.stripe_synced_at:
        return "ignored: older than the state already applied"
    status = CANCELED if deleted else STATUS_MAP.get(sub.get("status", ""))
    if status is None:
        return f"ignored: subscription status {sub.get('status')!r}"
    if sub.get("customer"):
        account.stripe_customer_id = sub["customer"]
    account.stripe_subscription_id = sub["id"]
    plan = Plan.objects.filter(stripe_price_id=_price_of(sub)).exclude(stripe_price_id="").first()
    if plan is not None:
        account.plan = plan
    elif status != CANCELED:
        log.error("subscription %s has price %r, which no plan has: plan left as %s", sub["id"], _price_of(sub),
                  account.plan)
    account.status = status
    account.current_period_end = _period_end(sub) or account.current_period_end
    account.cancel_at_period_end = bool(sub.get("cancel_at_period_end"))
    if status == PAST_DUE:
        account.grace_until = account.grace_until or as_of + timedelta(days=settings.BILLING_GRACE_DAYS)
    else:
        account.grace_until = None
    account.stripe_synced_at = as_of
    account.save()
    return f"{account.plan.slug} {status}" + (" (cancels at period end)" if account.cancel_at_period_end else "")


def _invoice_event(account: BillingAccount, invoice: dict, *, as_of: datetime, paid: bool) -> str:
    if account.stripe_synced_at and as_of < account.stripe_synced_at:
        return "ignored: older than the state already applied"
    if account.status == CANCELED or account.plan.is_trial:
        return "ignored: no paid plan to update"
    if paid:
        if account.status != PAST_DUE:
            return "paid: nothing to recover"
        account.status, account.grace_until = ACTIVE, None
    else:
        account.status = PAST_DUE
        account.grace_until = account.grace_until or as_of + timedelta(days=settings.BILLING_GRACE_DAYS)
    account.stripe_synced_at = as_of
    account.save(update_fields=["status", "grace_until", "stripe_synced_at", "updated_at"])
    return f"{account.plan.slug} {account.status}"
