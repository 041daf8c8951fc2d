from django.contrib import admin
from django.urls import include, path

from tradeflow import health

urlpatterns = [
    path("livez", health.livez, name="livez"),
    path("healthz", health.healthz, name="healthz"),
    path("", include("webhooks.urls")),
    path("", include("brokers.urls")),
    path("", include("bots.urls")),
    path("", include("accounts.urls")),
    path("", include("risk.urls")),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
]
