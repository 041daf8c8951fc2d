"""Create (or reset) the demo: an admin, a customer with a paper account, and print how to trade.

Idempotent: run it again and the same logins work; the customer's webhook key is re-issued (keys are
stored hashed, so the only way to print one is to mint it).
"""

from __future__ import annotations

import json

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import User
from brokers.models import BrokerAccount
from brokers.services import account_create, api_key_regenerate
from webhooks.examples import curl_example, webhook_url

ADMIN = ("admin@tradeflow.local", "admin-demo-pass")
CUSTOMER = ("trader@tradeflow.local", "trader-demo-pass")


def _user(email: str, password: str, *, staff: bool) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        user = (User.objects.create_superuser if staff else User.objects.create_user)(email, password)
    else:
        user.set_password(password)
        user.save(update_fields=["password"])
    EmailAddress.objects.update_or_create(user=user, email=email, defaults={"verified": True, "primary": True})
    return user


class Command(BaseCommand):
    help = "Create the demo admin, customer and paper account; print logins and a curl that trades."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print the result as JSON")

    @transaction.atomic
    def handle(self, *args, **options):
        _user(*ADMIN, staff=True)
        customer = _user(*CUSTOMER, staff=False)
        account = BrokerAccount.objects.filter(owner=customer, label="Demo paper").first()
        if account is None:
            account, key = account_create(owner=customer, label="Demo paper")
        else:
            key = api_key_regenerate(account=account)
        result = {
            "url": settings.PUBLIC_URL + "/",
            "admin": {"email": ADMIN[0], "password": ADMIN[1], "url": settings.PUBLIC_URL + "/admin/"},
            "customer": {"email": CUSTOMER[0], "password": CUSTOMER[1]},
            "account_webhook_url": webhook_url(key.raw),
            "curl": curl_example(key.raw),
        }
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2))
            return
        self.stdout.write(self.style.SUCCESS("TradeFlow demo is ready"))
        self.stdout.write(f"  Open      {result['url']}")
        self.stdout.write(f"  Customer  {CUSTOMER[0]} / {CUSTOMER[1]}")
        self.stdout.write(f"  Admin     {ADMIN[0]} / {ADMIN[1]}  ({result['admin']['url']})")
        self.stdout.write(f"  Webhook   {result['account_webhook_url']}")
        self.stdout.write("  A paper trade:")
        self.stdout.write(f"    {result['curl']}")
