from __future__ import annotations

from decimal import Decimal

import factory
from allauth.account.models import EmailAddress

from accounts.models import User
from brokers.services import account_create


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.django.Password("correct-horse-battery")

    @factory.post_generation
    def verified(self, create, extracted, **kwargs):
        if create:
            EmailAddress.objects.create(user=self, email=self.email, verified=True, primary=True)


def paper_account(*, owner, label: str = "Paper", capital: Decimal = Decimal("1000000"), **fields):
    account, key = account_create(owner=owner, label=label, paper_capital=capital, **fields)
    return account, key.raw


def kite_account(*, owner, api_key: str = "kitetestkey", api_secret: str = "kitetestsecret", access_token: str = "",
                 label: str = "Zerodha", mode: str = "live", options: dict | None = None, **fields):
    """A Zerodha account as the connect flow leaves it (defaults match ``tests/protocol/kite_server.py``)."""
    account, _ = account_create(owner=owner, label=label, broker="kite", mode=mode, currency="INR", api_key=api_key,
                                api_secret=api_secret, access_token=access_token,
                                options={"product": "NRML", "expiry_rule": "nearest_weekly", **(options or {})},
                                **fields)
    return account


def binance_account(*, owner, api_key: str, api_secret: str, label: str = "Binance", mode: str = "live",
                    market: str = "futures", **options):
    account, _ = account_create(owner=owner, label=label, broker="binance", mode=mode, currency="USDT",
                                api_key=api_key, api_secret=api_secret, options={"market": market, **options})
    return account
