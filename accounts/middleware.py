"""Show times in the customer's own timezone (TradingSettings.timezone); storage and logic stay in UTC."""

from __future__ import annotations

import zoneinfo

from django.conf import settings
from django.utils import timezone

from accounts.models import TradingSettings


class UserTimezoneMiddleware:
    """Activate the signed-in user's timezone for the request: template dates, forms and ``localtime`` follow it.

    Read per request (one indexed lookup) rather than cached in the session, so a change in the settings page
    or by an admin applies on the next page. Anonymous requests (webhooks, login) stay in UTC.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # Without a session cookie the user is anonymous: skip loading the lazy user (the webhook hot path).
        user = getattr(request, "user", None) if settings.SESSION_COOKIE_NAME in request.COOKIES else None
        name = None
        if user is not None and user.is_authenticated:
            name = TradingSettings.objects.filter(user_id=user.pk).values_list("timezone", flat=True).first()
        try:
            zone = zoneinfo.ZoneInfo(name) if name else None
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # a zone removed from tzdata since it was saved
            zone = None
        if zone is None:
            timezone.deactivate()
        else:
            timezone.activate(zone)
        request.timezone_name = str(zone) if zone else "UTC"
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()
