"""Plans, the trial and plan limits: what a user may do now, and why not.

The trial (seed 003) starts at sign-up and ends after ``BILLING_TRIAL_DAYS`` days or ``BILLING_TRIAL_TRADES``
executed trades, whichever comes first. A trade is an entry signal whose execution filled; exits are never
blocked and never counted. Paper-broker accounts are free: they count against no broker or bot limit.
Stripe (checkout, portal, webhook events) is in ``billing/payments.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from billing.models import BillingAccount, Plan
from tradeflow.precompiled import Precompiled

TRIAL_TRADES_REACHED = "Trial limit: {n} trades reached. Upgrade to continue."
TRIAL_EXPIRED = "Trial expired: {n} days elapsed. Upgrade to continue."
PAYMENT_OVERDUE = ("Payment overdue: the payment for your {plan} plan failed and the {days}-day grace period has "
                   "ended. Update your card on the Billing page to continue.")
SUBSCRIPTION_ENDED = "Subscription ended: your {plan} plan was canceled. Upgrade to continue."
MONTHLY_LIMIT = ("Monthly limit: your {plan} plan includes {n} trades a month, all used. They renew on {renews}; "
                 "upgrade to trade more now.")
WARN_SHARE = 0.8  # warn from 80 % of a trade allowance (80 of the trial's 100)
WARN_DAYS_LEFT = 1


TRIAL_DEFAULTS = {"name": "Trial", "max_brokers": 1, "max_accounts_per_broker": 1, "max_bot_subscriptions": 1}


def trial_plan() -> Plan:
    # Seeded by migration 0002; re-created if a flushed test database (or an operator) removed it, since every
    # sign-up needs it.
    return Plan.objects.get_or_create(slug=Plan.Slug.TRIAL, defaults=TRIAL_DEFAULTS)[0]


def billing_account_create(*, user, now: datetime | None = None) -> BillingAccount:
    """The user's billing record, on the trial. At sign-up the trial starts when the user joined; a user who
    existed before billing gets a fresh trial from now rather than being cut off mid-trade."""
    start = now or timezone.now()
    account, _ = BillingAccount.objects.select_related("plan").get_or_create(user=user, defaults={
        "plan": trial_plan(), "status": BillingAccount.Status.TRIALING, "trial_started_at": start,
        "trial_ends_at": start + timedelta(days=settings.BILLING_TRIAL_DAYS)})
    return account


def billing_account_get(*, user) -> BillingAccount:
    try:
        return BillingAccount.objects.select_related("plan").get(user=user)
    except BillingAccount.DoesNotExist:
        return billing_account_create(user=user)


def trades_used(*, user, since: datetime) -> int:
    """Executed trades since ``since``: filled entry executions, one indexed count (executions by account)."""
    from brokers.models import Execution

    return Execution.objects.filter(account__owner=user, kind=Execution.Kind.SIGNAL, status=Execution.Status.FILLED,
                                    intent__action="entry", created_at__gte=since).count()


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(now: datetime) -> datetime:
    start = month_start(now)
    return (start + timedelta(days=32)).replace(day=1)


def is_paid(account: BillingAccount, now: datetime) -> bool:
    """On a paid plan now: active, or past due within the grace period. A subscription set to cancel at the end
    of its period stops at that end even if Stripe's ``deleted`` event has not arrived yet."""
    if account.plan.is_trial:
        return False
    if account.cancel_at_period_end and account.current_period_end and now >= account.current_period_end:
        return False
    if account.status == BillingAccount.Status.ACTIVE:
        return True
    return (account.status == BillingAccount.Status.PAST_DUE and account.grace_until is not None
            and now < account.grace_until)


def effective_plan(account: BillingAccount, now: datetime) -> Plan:
    """The plan whose limits apply now: the paid one, or the trial's after a cancellation or an unpaid grace."""
    return account.plan if is_paid(account, now) else trial_plan()


def _trial_reason(account: BillingAccount, *, user, now: datetime, used: int | None = None) -> str | None:
    # Seed 003 order: the trade count first, then the days.
    used = trades_used(user=user, since=account.trial_started_at) if used is None else used
    if used >= settings.BILLING_TRIAL_TRADES:
        return TRIAL_TRADES_REACHED.format(n=settings.BILLING_TRIAL_TRADES)
    if now >= account.trial_ends_at:
        return TRIAL_EXPIRED.format(n=settings.BILLING_TRIAL_DAYS)
    return None


def entry_block_reason(*, user, now: datetime) -> str | None:
    """Why a new entry may not trade now under the user's plan, or None. Called by ``risk.services.decide`` for
    entries only: exits are never blocked. Two queries at most (the billing record, one count)."""
    return _block_reason(billing_account_get(user=user), user=user, now=now)


# Read for every drain and bot batch: compiled once per process (tradeflow/precompiled.py).
_billing_rows = Precompiled(
    lambda user_ids: BillingAccount.objects.select_related("plan").filter(user_id__any=user_ids),
    model=BillingAccount, arity=1, lists=(0,))


def entry_block_reasons(*, users, now: datetime) -> dict[int, str | None]:
    """``entry_block_reason`` for many users at once (a bot signal's subscribers): the billing records in one query
    and the trades of every limited allowance in one grouped count, instead of two queries per user."""
    from django.db.models import Case, Count, F, Value, When

    from brokers.models import Execution

    by_id = {user.pk: user for user in users}
    accounts = {a.user_id: a for a in _billing_rows(list(by_id))}
    for uid in by_id.keys() - accounts.keys():  # no billing record yet (created on the first look, as one by one)
        accounts[uid] = billing_account_get(user=by_id[uid])
    trial, paid = [], []  # the users whose allowance is limited: the trial, or a paid plan with a monthly count
    for uid, account in accounts.items():
        if not is_paid(account, now):
            trial.append(uid)
        elif account.plan.trades_per_month is not None:
            paid.append(uid)
    used: dict[int, int] = {}
    if trial or paid:
        # Each user's allowance starts at their trial's start, or at this month's start on a paid plan.
        month = Value(month_start(now))
        trial_start = F("account__owner__billing__trial_started_at")
        since = (month if not trial else trial_start if not paid
                 else Case(When(account__owner_id__in=paid, then=month), default=trial_start))
        rows = (Execution.objects.filter(account__owner_id__in=trial + paid, kind=Execution.Kind.SIGNAL,
                                         status=Execution.Status.FILLED, intent__action="entry")
                .annotate(since=since).filter(created_at__gte=F("since"))
                .values("account__owner_id").annotate(n=Count("pk")))
        used = {row["account__owner_id"]: row["n"] for row in rows}
    limited = set(trial) | set(paid)
    return {uid: _block_reason(account, user=by_id[uid], now=now,
                               used=used.get(uid, 0) if uid in limited else None)
            for uid, account in accounts.items()}


def _block_reason(account: BillingAccount, *, user, now: datetime, used: int | None = None) -> str | None:
    """``used``: the trades of the current allowance (trial or month) when the caller already counted them."""
    if is_paid(account, now):
        limit = account.plan.trades_per_month
        if limit is not None:
            used = trades_used(user=user, since=month_start(now)) if used is None else used
            if used >= limit:
                return MONTHLY_LIMIT.format(plan=account.plan.name, n=limit, renews=f"{next_month(now):%B} 1")
        return None
    reason = _trial_reason(account, user=user, now=now, used=used)
    if reason is None:
        return None
    # The trial is over: say what actually stopped a former subscriber.
    if account.status == BillingAccount.Status.PAST_DUE and not account.plan.is_trial:
        return PAYMENT_OVERDUE.format(plan=account.plan.name, days=settings.BILLING_GRACE_DAYS)
    if not account.plan.is_trial and (account.status == BillingAccount.Status.CANCELED
                                      or account.cancel_at_period_end):
        return SUBSCRIPTION_ENDED.format(plan=account.plan.name)
    return reason


# --- usage, for the billing page, the dashboard and the API ----------------------------------------------------

@dataclass(frozen=True)
class Usage:
    plan: Plan  # the plan whose limits apply now
    status: str
    on_trial: bool
    trades_used: int
    trades_limit: int | None  # None: unlimited
    period: str  # "trial" or "month"
    trial_ends_at: datetime | None
    trial_days_left: int | None
    blocked: str | None  # why entries are refused now
    warning: str | None
    account: BillingAccount

    @property
    def trades_left(self) -> int | None:
        return None if self.trades_limit is None else max(self.trades_limit - self.trades_used, 0)


def usage_get(*, user, now: datetime | None = None) -> Usage:
    now = now or timezone.now()
    account = billing_account_get(user=user)
    paid = is_paid(account, now)
    plan = account.plan if paid else trial_plan()
    if paid:
        limit, period = plan.trades_per_month, "month"
        used = trades_used(user=user, since=month_start(now)) if limit is not None else 0
        days_left = None
    else:
        limit, period = settings.BILLING_TRIAL_TRADES, "trial"
        used = trades_used(user=user, since=account.trial_started_at)
        days_left = max(math.ceil((account.trial_ends_at - now) / timedelta(days=1)), 0)
    blocked = _block_reason(account, user=user, now=now, used=used if limit is not None else None)
    warning = None
    if not blocked:
        if limit is not None and used >= limit * WARN_SHARE:
            warning = f"You have used {used} of {limit} trades this {'trial' if not paid else 'month'}."
        if not paid and account.trial_ends_at - now <= timedelta(days=WARN_DAYS_LEFT):
            hours = max(int((account.trial_ends_at - now) / timedelta(hours=1)), 0)
            ends = f"Your trial ends in {hours} hour{'s' if hours != 1 else ''}."
            warning = f"{ends} {warning}" if warning else ends
        if paid and account.status == BillingAccount.Status.PAST_DUE:
            warning = (f"Your last payment failed: update your card before {account.grace_until:%Y-%m-%d %H:%M} UTC "
                       "to keep trading.")
    return Usage(plan=plan, status=account.status, on_trial=not paid, trades_used=used, trades_limit=limit,
                 period=period, trial_ends_at=None if paid else account.trial_ends_at, trial_days_left=days_left,
                 blocked=blocked, warning=warning, account=account)


# --- plan limits where things are created ----------------------------------------------------------------------

def _count(n: int, noun: str) -> str:
    head, _, tail = noun.partition(" ")
    return f"{n} {head}{'' if n == 1 else 's'}{(' ' + tail) if tail else ''}"


def _refuse(plan: Plan, field: str, noun: str) -> None:
    allowed = getattr(plan, field)
    better = next((p for p in Plan.objects.filter(active=True).exclude(slug=Plan.Slug.TRIAL)
                   if getattr(p, field) is None or getattr(p, field) > allowed), None)
    if better is None:
        message = f"Your {plan.name} plan allows {_count(allowed, noun)}, the most any plan offers."
    else:
        more = "unlimited" if getattr(better, field) is None else str(getattr(better, field))
        message = f"Your {plan.name} plan allows {_count(allowed, noun)}; {better.name} allows {more}. " \
                  "Upgrade to add more."
    raise ValidationError(message, code="plan_limit")


def limit_check(*, user, resource: str, broker: str = "", bot=None, now: datetime | None = None) -> None:
    """Raise ``ValidationError`` (naming the plan that allows more) when adding ``resource`` would pass the user's
    plan limit. ``resource``: ``"account"`` (with ``broker``) or ``"bot"`` (with ``bot`` and ``broker``, the
    subscribing account's broker). Paper-broker accounts are free and never limited."""
    from bots.models import Subscription
    from brokers.models import Broker, BrokerAccount

    if broker == Broker.PAPER:
        return
    plan = effective_plan(billing_account_get(user=user), now or timezone.now())
    if resource == "account":
        real = BrokerAccount.objects.filter(owner=user).exclude(broker=Broker.PAPER)
        brokers = set(real.values_list("broker", flat=True))
        if broker not in brokers and plan.max_brokers is not None and len(brokers) >= plan.max_brokers:
            _refuse(plan, "max_brokers", "broker")
        if plan.max_accounts_per_broker is not None and \
                real.filter(broker=broker).count() >= plan.max_accounts_per_broker:
            _refuse(plan, "max_accounts_per_broker", "account per broker")
    elif resource == "bot":
        if plan.max_bot_subscriptions is None:
            return
        followed = set(Subscription.objects.filter(user=user).exclude(status=Subscription.Status.UNSUBSCRIBED)
                       .exclude(account__broker=Broker.PAPER).values_list("bot_id", flat=True))
        if bot is not None and bot.pk not in followed and len(followed) >= plan.max_bot_subscriptions:
            _refuse(plan, "max_bot_subscriptions", "bot subscription")
    else:
        raise ValueError(f"unknown resource {resource!r}")


def trial_extend(*, account: BillingAccount, days: int, actor=None) -> BillingAccount:
    """Admin action: push the trial end back by ``days`` from now (or from its current end if that is later)."""
    from accounts.services import audit_record

    base = max(account.trial_ends_at, timezone.now())
    account.trial_ends_at = base + timedelta(days=days)
    account.save(update_fields=["trial_ends_at", "updated_at"])
    audit_record(user=account.user, actor=actor, action="billing.trial_extended",
                 target=f"trial ends {account.trial_ends_at:%Y-%m-%d %H:%M} UTC", details={"days": days})
    return account
