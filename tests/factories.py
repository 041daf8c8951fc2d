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
