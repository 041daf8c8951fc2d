"""Create (or reset) the demo: an admin, a customer with a paper account, a bot the customer follows on that
account, and print how to trade.

Idempotent: run it again and the same logins work; the customer's webhook key is re-issued (keys are
stored hashed, so the only way to print one is to mint it). The bot's secret is stored encrypted, so it is
printed as it is (this command made it).
"""

from __future__ import annotations

import json
from decimal import Decimal

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django.db.models import Q

from accounts.models import User
from bots.examples import bot_curl, bot_webhook_url
from bots.models import Bot, Subscription
from bots.services import bot_create, subscription_create
from brokers.models import BrokerAccount
from brokers.services import account_create, api_key_regenerate
from webhooks.examples import curl_example, webhook_url

ADMIN = ("admin@tradeflow.local", "admin-demo-pass")
CUSTOMER = ("trader@tradeflow.local", "trader-demo-pass")


BOT_PATH = "demo-btc-scalper"


def _demo_bot(admin: User, customer: User, account: BrokerAccount) -> Bot:
    bot = Bot.objects.filter(webhook_path=BOT_PATH).first()
    if bot is None:
        bot, _ = bot_create(name="Demo BTC scalper", webhook_path=BOT_PATH, created_by=admin,
                            description="EMA cross on BTCUSDT, 5 minutes (demo)", market_type="futures",
                            broker="binance", default_leverage=5, default_margin=Decimal("100"),
                            default_stop_loss_pct=Decimal("2"), default_take_profit_pct=Decimal("4"),
                            symbols="BTCUSDT, ETHUSDT")
    live = ~Q(status=Subscription.Status.UNSUBSCRIBED)
    if not Subscription.objects.filter(live, bot=bot, account=account).exists():
        subscription_create(user=customer, bot=bot, account=account)
    return bot


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
        admin = _user(*ADMIN, staff=True)
        customer = _user(*CUSTOMER, staff=False)
        account = BrokerAccount.objects.filter(owner=customer, label="Demo paper").first()
        if account is None:
            account, key = account_create(owner=customer, label="Demo paper")
        else:
            key = api_key_regenerate(account=account)
        bot = _demo_bot(admin, customer, account)
        result = {
            "url": settings.PUBLIC_URL + "/",
            "admin": {"email": ADMIN[0], "password": ADMIN[1], "url": settings.PUBLIC_URL + "/admin/"},
            "customer": {"email": CUSTOMER[0], "password": CUSTOMER[1]},
            "account_webhook_url": webhook_url(key.raw),
            "curl": curl_example(key.raw),
            "bot_webhook_url": bot_webhook_url(bot),
            "bot_secret": bot.secret,
            "bot_curl": bot_curl(bot, secret=bot.secret),
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
        self.stdout.write(f"  Bot       {bot.name}: {result['bot_webhook_url']} (followed by the paper account)")
        self.stdout.write("  A bot alert, traded for every subscriber:")
        self.stdout.write(f"    {result['bot_curl']}")
