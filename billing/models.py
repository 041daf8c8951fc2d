"""Plans, each user's billing record (trial and Stripe subscription state) and the Stripe events received.

Seed 003 "Billing & Trial Flow": plans trial/starter/pro/elite; a trial of 3 days or 100 trades, whichever
comes first; ``billing_status`` (customer, subscription, status, period end). Limits left empty mean "unlimited".
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models


class Plan(models.Model):
    """A price list entry and its limits; editable in the admin. ``stripe_price_id`` links it to Stripe."""

    class Slug(models.TextChoices):
        TRIAL = "trial", "Trial"
        STARTER = "starter", "Starter"
        PRO = "pro", "Pro"
        ELITE = "elite", "Elite"

    slug = models.SlugField(max_length=20, unique=True, choices=Slug.choices)
    name = models.CharField(max_length=40)
    stripe_price_id = models.CharField(max_length=100, blank=True,
                                       help_text="Stripe Price id (price_…) of the monthly subscription")
    price = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    currency = models.CharField(max_length=3, default="usd")
    max_brokers = models.PositiveSmallIntegerField(null=True, blank=True,
                                                   help_text="Real brokers connected (paper is free); empty: unlimited")
    max_accounts_per_broker = models.PositiveSmallIntegerField(null=True, blank=True,
                                                               help_text="Empty: unlimited")
    max_bot_subscriptions = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Bots followed with a real broker account (paper is free); empty: unlimited")
    trades_per_month = models.PositiveIntegerField(
        null=True, blank=True, help_text="Executed entries per calendar month (UTC); empty: unlimited")
    sort_order = models.PositiveSmallIntegerField(default=0)
    active = models.BooleanField(default=True, help_text="Offered on the billing page")

    class Meta:
        ordering = ["sort_order", "price"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_trial(self) -> bool:
        return self.slug == self.Slug.TRIAL


class BillingAccount(models.Model):
    """One per user (seed ``billing_status``), created at sign-up: the plan in force and the Stripe state."""

    class Status(models.TextChoices):
        TRIALING = "trialing", "Trialing"
        ACTIVE = "active", "Active"
        PAST_DUE = "past_due", "Past due"
        CANCELED = "canceled", "Canceled"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="billing")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="accounts")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRIALING, db_index=True)
    trial_started_at = models.DateTimeField()
    trial_ends_at = models.DateTimeField()
    # A failed payment keeps the paid plan until then (Stripe retries the card meanwhile).
    grace_until = models.DateTimeField(null=True, blank=True)
    stripe_customer_id = models.CharField(max_length=100, blank=True, db_index=True)
    stripe_subscription_id = models.CharField(max_length=100, blank=True, db_index=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    # ``created`` of the newest Stripe event applied: an older event arriving late changes nothing.
    stripe_synced_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return f"{self.user} · {self.plan} ({self.status})"


class StripeEvent(models.Model):
    """A Stripe webhook event, stored once by its id: a redelivered event finds its row and changes nothing."""

    id = models.CharField(max_length=100, primary_key=True)
    type = models.CharField(max_length=80, db_index=True)
    created = models.DateTimeField(help_text="When Stripe created the event")
    received_at = models.DateTimeField(auto_now_add=True)
    outcome = models.CharField(max_length=200, blank=True)
    payload = models.JSONField(default=dict)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"
