"""A billing record (on the trial) for every new user, created with the user (seed 003: trial starts at sign-up)."""

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def create_billing_account(sender, instance, created: bool, raw: bool = False, **kwargs) -> None:
    if created and not raw:
        from billing.services import billing_account_create

        billing_account_create(user=instance, now=instance.date_joined)
