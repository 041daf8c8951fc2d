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
    path("", include("billing.urls")),  # billing pages, the Stripe webhook and GET /api/v1/billing/
    path("api/v1/", include("tradeflow.api_urls")),  # the customer API (DRF); webhook receivers are above
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
]

handler404 = "tradeflow.api_common.page_not_found"  # JSON under /api/, Django's page elsewhere
