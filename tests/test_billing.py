"""Plans, the trial (3 days or 100 trades) enforced when a trade executes, plan limits where things are created,
and what the customer sees (billing page, dashboard, API). Stripe itself: tests/test_billing_stripe.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from billing.models import BillingAccount, Plan
from billing.services import billing_account_get, entry_block_reason, limit_check, usage_get
from bots.models import Subscription
from bots.services import bot_create
from brokers.models import BrokerAccount, Execution
from tests import factories
from tests.test_connect import binance_form, kite_form
from tests.test_execution import FakeAdapter, FakeBroker, run, signal_execution, unify

TRIAL_TRADES = "Trial limit: 100 trades reached. Upgrade to continue."
TRIAL_DAYS = "Trial expired: 3 days elapsed. Upgrade to continue."
T0 = timezone.now().replace(microsecond=0) - timedelta(days=30)


@pytest.fixture
def broker(monkeypatch) -> FakeBroker:
    fake = FakeBroker()
    monkeypatch.setattr("brokers.services.execution.get_adapter", lambda account: FakeAdapter(account, fake))
    return fake


def entry(account, symbol="BTCUSDT") -> Execution:
    return run(signal_execution(account, unify("buy", symbol=symbol)))


def exit_(account, symbol="BTCUSDT") -> Execution:
    return run(signal_execution(account, unify("close", symbol=symbol, qty=None, price=None)))


def filled_entries(account, n: int) -> None:
    """``n`` entries that already executed (as the engine leaves them), without running the engine n times."""
    Execution.objects.bulk_create(Execution(account=account, intent={"action": "entry", "side": "buy"},
                                            status=Execution.Status.FILLED) for _ in range(n))


def on_plan(user, slug: str, **fields) -> BillingAccount:
    account = billing_account_get(user=user)
    account.plan = Plan.objects.get(slug=slug)
    account.status = fields.pop("status", BillingAccount.Status.ACTIVE)
    for name, value in fields.items():
        setattr(account, name, value)
    account.save()
    return account


# --- the trial ------------------------------------------------------------------------------------------------


def test_sign_up_starts_the_trial_on_the_trial_plan(db):
    with time_machine.travel(T0, tick=False):
        user = factories.UserFactory()
    account = BillingAccount.objects.get(user=user)
    assert (account.plan.slug, account.status) == ("trial", "trialing")
    assert account.trial_started_at == T0 and account.trial_ends_at == T0 + timedelta(days=3)


def test_the_four_seed_plans_exist_and_pro_matches_the_seed(db):
    assert list(Plan.objects.values_list("slug", flat=True)) == ["trial", "starter", "pro", "elite"]
    pro = Plan.objects.get(slug="pro")
    assert (pro.price, pro.max_brokers, pro.max_accounts_per_broker, pro.max_bot_subscriptions,
            pro.trades_per_month) == (40, 2, 2, 1, None)


def test_a_user_from_before_billing_gets_a_record_and_a_fresh_trial_lazily(owner):
    BillingAccount.objects.filter(user=owner).delete()
    with time_machine.travel(T0, tick=False):
        assert entry_block_reason(user=owner, now=timezone.now()) is None
    assert BillingAccount.objects.get(user=owner).trial_ends_at == T0 + timedelta(days=3)


def test_trial_by_trade_count_blocks_the_101st_entry_with_the_seed_message_and_exits_still_run(paper, broker):
    account, _ = paper
    filled_entries(account, 98)
    Execution.objects.bulk_create([Execution(account=account, intent={"action": "exit"},
                                             status=Execution.Status.FILLED)] * 1)  # exits are not trades
    Execution.objects.bulk_create([Execution(account=account, intent={"action": "entry"},
                                             status=Execution.Status.REJECTED)])  # nor are refused entries
    assert entry(account).status == Execution.Status.FILLED  # the 99th trade
    assert entry(account, "ETHUSDT").status == Execution.Status.FILLED  # the 100th

    blocked = entry(account, "SOLUSDT")
    assert (blocked.status, blocked.reason_code, blocked.reason) == ("rejected", "plan_limit", TRIAL_TRADES)
    assert exit_(account).status == Execution.Status.FILLED  # closing is never blocked
    assert [c[3] for c in broker.calls if c[0] == "place"] == ["BTCUSDT", "ETHUSDT", "BTCUSDT"]


def test_trial_by_days_with_time_frozen(db, broker):
    with time_machine.travel(T0, tick=False) as clock:
        user = factories.UserFactory()
        account, _ = factories.paper_account(owner=user)
        clock.move_to(T0 + timedelta(days=3) - timedelta(seconds=1))
        assert entry(account).status == Execution.Status.FILLED  # the last second of the trial
        clock.move_to(T0 + timedelta(days=3))
        blocked = entry(account, "ETHUSDT")
        assert (blocked.status, blocked.reason) == ("rejected", TRIAL_DAYS)
        assert exit_(account).status == Execution.Status.FILLED


def test_a_blocked_entry_through_the_webhook_is_recorded_with_its_reason(client, owner, paper, broker,
                                                                         django_capture_on_commit_callbacks):
    account, key = paper
    filled_entries(account, 100)
    body = '{"version": "unify.v1", "intent": {"side": "buy", "symbol": "BTCUSDT", "qty": "1", "price": "100"}}'
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/api/v1/webhooks/{key}", data=body, content_type="text/plain").status_code == 202
    execution = Execution.objects.exclude(signal=None).get()
    assert (execution.status, execution.reason) == ("rejected", TRIAL_TRADES)
    assert broker.calls == []
    client.force_login(owner)
    assert TRIAL_TRADES in client.get("/executions/").content.decode()


def test_a_paid_plan_lifts_the_trial_and_a_monthly_allowance_applies(paper, broker, owner):
    account, _ = paper
    filled_entries(account, 100)
    on_plan(owner, "pro")
    assert entry(account).status == Execution.Status.FILLED  # pro: unlimited
    on_plan(owner, "starter")
    Plan.objects.filter(slug="starter").update(trades_per_month=101)
    blocked = entry(account, "ETHUSDT")  # 101 entries this month
    assert blocked.status == "rejected" and blocked.reason.startswith(
        "Monthly limit: your Starter plan includes 101 trades a month, all used.")


def test_usage_warns_near_the_end_of_the_trial(db):
    with time_machine.travel(T0, tick=False) as clock:
        user = factories.UserFactory()
        account, _ = factories.paper_account(owner=user)
        usage = usage_get(user=user)
        assert (usage.trades_used, usage.trades_limit, usage.trial_days_left, usage.warning) == (0, 100, 3, None)
        filled_entries(account, 80)
        assert usage_get(user=user).warning == "You have used 80 of 100 trades this trial."
        clock.move_to(T0 + timedelta(days=2, hours=1))
        usage = usage_get(user=user)
        assert usage.trial_days_left == 1 and usage.warning.startswith("Your trial ends in 23 hours.")
        clock.move_to(T0 + timedelta(days=3))
        assert usage_get(user=user).blocked == TRIAL_DAYS


# --- plan limits where things are created --------------------------------------------------------------------


def test_connecting_a_second_broker_on_the_trial_names_the_plan_that_allows_more(owner_client, owner):
    factories.binance_account(owner=owner, api_key="a" * 64, api_secret="b" * 64)
    response = owner_client.post("/brokers/connect/kite/", kite_form_data())
    assert response.status_code == 200
    assert "Your Trial plan allows 1 broker; Pro allows 2. Upgrade to add more." in response.content.decode()
    assert BrokerAccount.objects.filter(owner=owner).count() == 1


def kite_form_data(**overrides) -> dict:
    class Server:
        api_key, api_secret = "kitetestkey", "kitetestsecret"
    return kite_form(Server, **overrides)


def test_a_second_account_at_the_same_broker_and_the_pro_limits(owner_client, owner):
    factories.kite_account(owner=owner)
    response = owner_client.post("/brokers/connect/kite/", kite_form_data(label="Second"))
    assert "Your Trial plan allows 1 account per broker; Pro allows 2. Upgrade to add more." in \
        response.content.decode()
    on_plan(owner, "pro")
    assert owner_client.post("/brokers/connect/kite/", kite_form_data(label="Second")).status_code == 302
    third = owner_client.post("/brokers/connect/kite/", kite_form_data(label="Third"))
    assert "Your Pro plan allows 2 accounts per broker; Elite allows 5. Upgrade to add more." in \
        third.content.decode()
    assert BrokerAccount.objects.filter(owner=owner, broker="kite").count() == 2


def test_binance_connect_page_shows_the_broker_limit_before_asking_binance(owner_client, owner):
    factories.kite_account(owner=owner)
    response = owner_client.post("/brokers/connect/binance/", binance_form("a" * 64, "b" * 64))
    assert "Your Trial plan allows 1 broker; Pro allows 2. Upgrade to add more." in response.content.decode()
    assert not BrokerAccount.objects.filter(owner=owner, broker="binance").exists()


def test_paper_accounts_are_free(owner):
    for n in range(3):
        factories.paper_account(owner=owner, label=f"Paper {n}")
    limit_check(user=owner, resource="account", broker="paper")  # no error


def test_subscribing_to_a_second_bot_is_refused_on_the_page_with_the_plan_that_allows_more(owner_client, owner):
    first, _ = bot_create(name="First", broker="binance", market_type="futures")
    second, _ = bot_create(name="Second", broker="binance", market_type="futures")
    binance = factories.binance_account(owner=owner, api_key="a" * 64, api_secret="b" * 64)
    Subscription.objects.create(user=owner, bot=first, account=binance)
    response = owner_client.post(f"/bots/{second.pk}/subscribe/", {"account": binance.pk})
    assert response.status_code == 200
    assert "Your Trial plan allows 1 bot subscription; Elite allows 5. Upgrade to add more." in \
        response.content.decode()
    assert Subscription.objects.filter(user=owner).count() == 1
    paper, _ = factories.paper_account(owner=owner)  # on paper: free
    assert owner_client.post(f"/bots/{second.pk}/subscribe/", {"account": paper.pk}).status_code == 302


def test_after_an_unpaid_grace_the_trial_limits_apply_again(owner):
    factories.kite_account(owner=owner)
    on_plan(owner, "pro", status=BillingAccount.Status.PAST_DUE, grace_until=timezone.now() + timedelta(hours=1))
    limit_check(user=owner, resource="account", broker="kite")  # still Pro during the grace period
    on_plan(owner, "pro", status=BillingAccount.Status.PAST_DUE, grace_until=timezone.now() - timedelta(hours=1))
    with pytest.raises(Exception, match="Your Trial plan allows 1 account per broker"):
        limit_check(user=owner, resource="account", broker="kite")


# --- what the customer sees ----------------------------------------------------------------------------------


def test_billing_page_without_stripe_keys_says_so_and_shows_usage(owner_client, settings):
    settings.STRIPE_SECRET_KEY = ""
    body = owner_client.get("/billing/").content.decode()
    assert "Billing is not configured on this server" in body
    assert "0 of 100 trades used" in body and "3 days left" in body
    assert "Upgrade to Pro" not in body
    response = owner_client.post("/billing/checkout/pro/")
    assert response.status_code == 302 and response.url == "/billing/"


def test_dashboard_shows_trial_usage_and_the_warning(owner_client, paper):
    filled_entries(paper[0], 85)
    body = owner_client.get("/").content.decode()
    assert 'data-testid="billing-usage"' in body and "<strong>Trial</strong>" in body
    assert "85 of 100 trades used" in body and "3 days left" in body
    assert "You have used 85 of 100 trades this trial." in body


def test_billing_api_answers_the_callers_own_usage(client, owner, other, paper):
    filled_entries(paper[0], 7)
    client.force_login(other)
    assert client.get("/api/v1/billing/").json()["trades_used"] == 0
    client.force_login(owner)
    data = client.get("/api/v1/billing/").json()
    assert {k: data[k] for k in ("plan", "status", "on_trial", "trial_days_left", "trades_used", "trades_limit")} == {
        "plan": "trial", "status": "trialing", "on_trial": True, "trial_days_left": 3, "trades_used": 7,
        "trades_limit": 100}
    client.logout()
    assert client.get("/api/v1/billing/").status_code == 401


def test_admin_extends_a_trial(client, admin_user, owner):
    account = billing_account_get(user=owner)
    before = account.trial_ends_at
    client.force_login(admin_user)
    response = client.post("/admin/billing/billingaccount/", {"action": "extend_trial",
                                                              "_selected_action": [account.pk]})
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.trial_ends_at == before + timedelta(days=3)
    assert client.get("/admin/billing/billingaccount/?q=owner@").status_code == 200
    assert client.get("/admin/billing/plan/").status_code == 200


def test_the_trial_gate_costs_two_queries_per_entry(owner, paper, django_assert_num_queries):
    filled_entries(paper[0], 5)
    owner = type(owner).objects.get(pk=owner.pk)  # nothing cached
    with django_assert_num_queries(2):  # the billing record with its plan, one count of filled entries
        assert entry_block_reason(user=owner, now=timezone.now()) is None


def test_the_api_refuses_a_subscription_over_the_plan_limit_in_the_error_format(client, owner):
    first, _ = bot_create(name="First", broker="binance", market_type="futures")
    second, _ = bot_create(name="Second", broker="binance", market_type="futures")
    binance = factories.binance_account(owner=owner, api_key="a" * 64, api_secret="b" * 64)
    Subscription.objects.create(user=owner, bot=first, account=binance)
    client.force_login(owner)
    response = client.post("/api/v1/subscriptions/", {"bot": second.pk, "account": binance.pk},
                           content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "Your Trial plan allows 1 bot subscription; Elite allows 5. Upgrade to add more." in str(error)
