from __future__ import annotations

from django.db.models import QuerySet

from billing.models import Plan


def plan_list_for_sale() -> QuerySet[Plan]:
    """The plans a customer can buy (the trial is given, not sold)."""
    return Plan.objects.filter(active=True).exclude(slug=Plan.Slug.TRIAL).exclude(stripe_price_id="")


def plan_for_sale(*, slug: str) -> Plan | None:
    return plan_list_for_sale().filter(slug=slug).first()
