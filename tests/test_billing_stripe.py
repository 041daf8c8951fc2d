"""Stripe subscriptions: the real ``stripe`` client against a local Stripe (tests/protocol/stripe_server.py), and
webhook events signed with a test secret exactly as Stripe signs them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from billing.models import BillingAccount, StripeEvent
from billing.services import entry_block_reason, limit_check
from tests import factories
from tests.protocol.stripe_server import API_KEY, StripeServer, event, signed

SECRET = "whsec_test_tradeflow"
WEBHOOK = "/billing/stripe/webhook/"
pytestmark = pytest.mark.slow


@pytest.fixture
def stripe_server(settings):
    with StripeServer() as server:
        settings.STRIPE_SECRET_KEY = API_KEY
        settings.STRIPE_API_BASE = server.url
        settings.STRIPE_WEBHOOK_SECRET = SECRET
        for price, amount, name in (("price_starter", 2000, "Starter"), ("price_pro", 4000, "Pro"),
                                    ("price_elite", 9900, "Elite")):
            server.price(price, amount=amount, name=name)
        yield server


def deliver(client, payload, *, secret: str = SECRET, timestamp: int | None = None):
    body, header = signed(payload, secret, timestamp=timestamp)
    return client.post(WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def upgrade(owner_client, server: StripeServer, slug: str = "pro") -> dict:
    """The customer clicks Upgrade, pays on Stripe's page; returns the completed Checkout session."""
    response = owner_client.post(f"/billing/checkout/{slug}/")
    assert response.status_code == 302 and response.url.startswith(f"{server.url}/checkout/pay/cs_test_")
    return server.pay(response.url.rsplit("/", 1)[1])


def account_of(user) -> BillingAccount:
    return BillingAccount.objects.select_related("plan").get(user=user)


def expire_trial(user) -> None:
    BillingAccount.objects.filter(user=user).update(trial_ends_at=timezone.now() - timedelta(days=1))


# --- upgrade ---------------------------------------------------------------------------------------------------


def test_billing_page_offers_the_paid_plans_when_configured(owner_client, stripe_server):
    body = owner_client.get("/billing/").content.decode()
    assert "Billing is not configured" not in body
    assert "Upgrade to Pro" in body and "$40.00/mo" in body


def test_upgrade_through_checkout_and_its_webhook(client, owner_client, owner, stripe_server):
    expire_trial(owner)
    assert entry_block_reason(user=owner, now=timezone.now()).startswith("Trial expired")
    session = upgrade(owner_client, stripe_server)
    account = account_of(owner)
    assert session["customer"] == account.stripe_customer_id  # Checkout is for the customer we created
    assert session["client_reference_id"] == str(owner.pk)
    assert (account.plan.slug, account.status) == ("trial", "trialing")  # nothing changes before Stripe says so

    response = deliver(client, event("checkout.session.completed", session))
    assert response.status_code == 200, response.content
    account = account_of(owner)
    assert (account.plan.slug, account.status, account.stripe_subscription_id) == ("pro", "active",
                                                                                   session["subscription"])
    period_end = stripe_server.subscription(session["subscription"])["current_period_end"]
    assert account.current_period_end == datetime.fromtimestamp(period_end, tz=UTC)
    assert entry_block_reason(user=owner, now=timezone.now()) is None  # trading again
    limit_check(user=owner, resource="account", broker="kite")  # Pro limits
    assert owner_client.get("/api/v1/billing/").json()["plan"] == "pro"


def test_success_page_applies_the_checkout_at_once_and_the_late_webhook_changes_nothing(client, owner_client, owner,
                                                                                        stripe_server):
    session = upgrade(owner_client, stripe_server, "elite")
    success = urlsplit(session["success_url"])
    page = owner_client.get(success.path, parse_qs(success.query))
    assert "You are on Elite." in page.content.decode()
    synced = account_of(owner)
    assert synced.plan.slug == "elite"
    assert deliver(client, event("checkout.session.completed", session)).status_code == 200
    after = account_of(owner)
    assert (after.plan_id, after.status, after.current_period_end) == (synced.plan_id, synced.status,
                                                                      synced.current_period_end)


def test_someone_elses_checkout_session_on_my_success_page_changes_nothing(owner_client, owner, other, stripe_server):
    client = Client()
    client.force_login(other)
    session = upgrade(client, stripe_server)
    owner_client.get("/billing/success/", {"session_id": session["id"]})
    mine = account_of(owner)
    assert (mine.plan.slug, mine.stripe_subscription_id) == ("trial", "")
    client.get("/billing/success/", {"session_id": session["id"]})  # the payer's own page applies it
    assert account_of(other).plan.slug == "pro"


def test_checkout_cancel_page(owner_client):
    assert "Nothing was charged" in owner_client.get("/billing/cancel/").content.decode()


def test_customer_portal_for_card_changes_and_cancellation(client, owner_client, owner, stripe_server):
    none_yet = owner_client.post("/billing/portal/")
    assert none_yet.status_code == 302 and none_yet.url == "/billing/"
    deliver(client, event("checkout.session.completed", upgrade(owner_client, stripe_server)))
    response = owner_client.post("/billing/portal/")
    assert response.status_code == 302 and response.url.startswith(f"{stripe_server.url}/portal/bps_")


# --- cancellation, payment failure -----------------------------------------------------------------------------


def test_cancellation_at_period_end_keeps_the_plan_until_then(client, owner_client, owner, stripe_server):
    session = upgrade(owner_client, stripe_server)
    deliver(client, event("checkout.session.completed", session))
    expire_trial(owner)
    sub = stripe_server.client.v1.subscriptions.update(session["subscription"],
                                                        params={"cancel_at_period_end": True}).to_dict()
    assert deliver(client, event("customer.subscription.updated", sub)).status_code == 200
    account = account_of(owner)
    assert (account.plan.slug, account.status, account.cancel_at_period_end) == ("pro", "active", True)
    assert "Cancels at the end of the period" in owner_client.get("/billing/").content.decode()
    assert entry_block_reason(user=owner, now=timezone.now()) is None

    end = account.current_period_end
    assert entry_block_reason(user=owner, now=end) == \
        "Subscription ended: your Pro plan was canceled. Upgrade to continue."  # even before Stripe's event
    with time_machine.travel(end + timedelta(minutes=1), tick=False):
        ended = {**sub, "status": "canceled", "ended_at": int(time.time())}
        assert deliver(client, event("customer.subscription.deleted", ended)).status_code == 200
        account = account_of(owner)
        assert account.status == "canceled"
        assert entry_block_reason(user=owner, now=timezone.now()) == \
            "Subscription ended: your Pro plan was canceled. Upgrade to continue."
        factories.kite_account(owner=owner)
        with pytest.raises(Exception, match="Your Trial plan allows 1 broker; Pro allows 2"):
            limit_check(user=owner, resource="account", broker="binance")


def test_payment_failure_grace_then_trial_limits_then_recovery(client, owner_client, owner, stripe_server):
    session = upgrade(owner_client, stripe_server)
    deliver(client, event("checkout.session.completed", session))
    expire_trial(owner)
    invoice = {"id": "in_failed", "object": "invoice", "customer": session["customer"],
               "parent": {"subscription_details": {"subscription": session["subscription"]}}, "status": "open"}
    start = timezone.now() + timedelta(days=30)
    with time_machine.travel(start, tick=False) as clock:
        assert deliver(client, event("invoice.payment_failed", invoice)).status_code == 200
        account = account_of(owner)
        assert account.status == "past_due" and account.grace_until == start.replace(microsecond=0) + timedelta(days=3)
        assert entry_block_reason(user=owner, now=timezone.now()) is None  # within the grace period
        owner_client.force_login(owner)  # the session cookie did not survive the month
        assert "Your last payment failed" in owner_client.get("/billing/").content.decode()

        clock.move_to(start + timedelta(days=3, minutes=1))
        assert entry_block_reason(user=owner, now=timezone.now()) == (
            "Payment overdue: the payment for your Pro plan failed and the 3-day grace period has ended. "
            "Update your card on the Billing page to continue.")
        retried = {**invoice, "id": "in_retry"}
        assert deliver(client, event("invoice.payment_failed", retried)).status_code == 200
        assert account_of(owner).grace_until == account.grace_until  # a retry does not extend the grace

        paid = {**invoice, "status": "paid"}
        assert deliver(client, event("invoice.paid", paid)).status_code == 200
        account = account_of(owner)
        assert (account.status, account.grace_until) == ("active", None)
        assert entry_block_reason(user=owner, now=timezone.now()) is None


# --- delivery: signatures, duplicates, order ---------------------------------------------------------------------


def test_bad_signature_stale_timestamp_and_missing_header_are_400_and_change_nothing(client, owner_client, owner,
                                                                                    stripe_server):
    session = upgrade(owner_client, stripe_server)
    payload = event("checkout.session.completed", session)
    assert deliver(client, payload, secret="whsec_wrong").status_code == 400
    assert deliver(client, payload, timestamp=int(time.time()) - 301).status_code == 400  # a replay
    body, _ = signed(payload, SECRET)
    assert client.post(WEBHOOK, data=body, content_type="application/json").status_code == 400
    tampered_body, header = signed(payload, SECRET)
    tampered = tampered_body.replace(str(owner.pk), "999999")
    assert client.post(WEBHOOK, data=tampered, content_type="application/json",
                       HTTP_STRIPE_SIGNATURE=header).status_code == 400
    assert account_of(owner).plan.slug == "trial" and not StripeEvent.objects.exists()
    assert deliver(client, payload).status_code == 200 and account_of(owner).plan.slug == "pro"


def test_webhook_without_a_configured_secret_refuses(client, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    assert deliver(client, event("invoice.paid", {}), secret="anything").status_code == 400


def test_the_same_event_twice_changes_nothing_the_second_time(client, owner_client, owner, stripe_server):
    session = upgrade(owner_client, stripe_server)
    deliver(client, event("checkout.session.completed", session))
    failed = event("invoice.payment_failed", {"id": "in_1", "object": "invoice", "customer": session["customer"],
                                              "subscription": session["subscription"]})
    first = deliver(client, failed)
    grace = account_of(owner).grace_until
    BillingAccount.objects.filter(user=owner).update(status="active", grace_until=None)  # say an admin fixed it
    second = deliver(client, failed)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.content == b"duplicate: already processed"
    account = account_of(owner)
    assert (account.status, account.grace_until) == ("active", None) and grace is not None
    assert StripeEvent.objects.filter(id=failed["id"]).count() == 1


def test_out_of_order_events_never_revive_a_canceled_subscription(client, owner_client, owner, stripe_server):
    session = upgrade(owner_client, stripe_server)
    expire_trial(owner)
    sub = stripe_server.subscription(session["subscription"])
    now = int(time.time())
    # Stripe delivers the cancellation first, then the older creation, update and checkout completion.
    assert deliver(client, event("customer.subscription.deleted", {**sub, "status": "canceled"},
                                 created=now)).status_code == 200
    assert account_of(owner).status == "canceled"
    for late in (event("checkout.session.completed", session, created=now - 60),
                 event("customer.subscription.created", sub, created=now - 61),
                 event("customer.subscription.updated", sub, created=now - 30)):
        assert deliver(client, late).content == b"ignored: this subscription has ended"
    account = account_of(owner)
    assert (account.status, account.plan.slug) == ("canceled", "pro")
    assert entry_block_reason(user=owner, now=timezone.now()) == \
        "Subscription ended: your Pro plan was canceled. Upgrade to continue."


def test_subscription_events_before_the_checkout_completion_apply_the_current_state(client, owner_client, owner,
                                                                                    stripe_server):
    session = upgrade(owner_client, stripe_server)
    sub = stripe_server.subscription(session["subscription"])
    stripe_server.client.v1.subscriptions.update(sub["id"], params={"cancel_at_period_end": True})
    # The "created" event (its payload says cancel_at_period_end=False) arrives after the change: Stripe's
    # current state wins, whatever the payload and the order.
    assert deliver(client, event("customer.subscription.created", sub)).status_code == 200
    deliver(client, event("checkout.session.completed", session))
    account = account_of(owner)
    assert (account.plan.slug, account.status, account.cancel_at_period_end) == ("pro", "active", True)


def test_an_older_invoice_event_does_not_undo_a_newer_one(client, owner_client, owner, stripe_server):
    session = upgrade(owner_client, stripe_server)
    deliver(client, event("checkout.session.completed", session))
    invoice = {"id": "in_2", "object": "invoice", "customer": session["customer"],
               "subscription": session["subscription"]}
    later = int(time.time()) + 3600
    with time_machine.travel(datetime.fromtimestamp(later + 5, tz=UTC), tick=False):
        deliver(client, event("invoice.payment_failed", invoice, created=later))
        deliver(client, event("invoice.paid", invoice, created=later + 1))
        assert account_of(owner).status == "active"
        assert deliver(client, event("invoice.payment_failed", invoice, created=later)).content == \
            b"ignored: older than the state already applied"
        assert account_of(owner).status == "active"


def test_a_subscriber_is_sent_to_the_portal_instead_of_a_second_checkout(client, owner_client, owner, stripe_server):
    deliver(client, event("checkout.session.completed", upgrade(owner_client, stripe_server)))
    response = owner_client.post("/billing/checkout/elite/", follow=True)
    assert "You already have a subscription: change plan or card in the customer portal" in \
        response.content.decode()
    assert len([s for s in stripe_server.client.v1.subscriptions.list().data]) == 1  # nothing billed twice


def test_events_about_an_old_subscription_leave_the_current_one_alone(client, owner_client, owner, stripe_server):
    session = upgrade(owner_client, stripe_server)
    deliver(client, event("checkout.session.completed", session))
    old = {"id": "sub_old", "object": "subscription", "customer": session["customer"], "status": "canceled",
           "items": {"data": [{"price": {"id": "price_starter"}}]}}
    assert deliver(client, event("customer.subscription.deleted", old)).content == \
        b"ignored: not the customer's current subscription"
    account = account_of(owner)
    assert (account.plan.slug, account.status, account.stripe_subscription_id) == ("pro", "active",
                                                                                   session["subscription"])
