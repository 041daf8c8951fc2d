"""The four plans of seed 003. Prices and limits stay editable in the admin; Stripe price ids are placeholders
(seed 003's ``price_pro``) until the operator pastes the real ones from the Stripe dashboard."""

from decimal import Decimal

from django.db import migrations

PLANS = [
    # slug, name, price, brokers, accounts per broker, bot subscriptions, trades per month, order
    ("trial", "Trial", "0", 1, 1, 1, None, 0),
    ("starter", "Starter", "20", 1, 1, 1, 300, 1),
    ("pro", "Pro", "40", 2, 2, 1, None, 2),  # seed 003: 2 brokers, 2 accounts per broker, 1 bot, unlimited
    ("elite", "Elite", "99", 5, 5, 5, None, 3),
]


def create_plans(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    for slug, name, price, brokers, accounts, bots, trades, order in PLANS:
        Plan.objects.update_or_create(slug=slug, defaults={
            "name": name, "price": Decimal(price), "max_brokers": brokers, "max_accounts_per_broker": accounts,
            "max_bot_subscriptions": bots, "trades_per_month": trades, "sort_order": order,
            "stripe_price_id": "" if slug == "trial" else f"price_{slug}",
        })


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_plans_billing_accounts_events")]
    operations = [migrations.RunPython(create_plans, migrations.RunPython.noop)]
