from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.models import TradingSettings


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def create_trading_settings(sender, instance, created: bool, **kwargs) -> None:
    if created:
        TradingSettings.objects.get_or_create(user=instance)
