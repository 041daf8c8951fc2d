from django.urls import path

from billing import api, views

urlpatterns = [
    path("billing/", views.billing_page, name="billing"),
    path("billing/checkout/<slug:slug>/", views.checkout, name="billing-checkout"),
    path("billing/portal/", views.portal, name="billing-portal"),
    path("billing/success/", views.checkout_success, name="billing-success"),
    path("billing/cancel/", views.checkout_cancel, name="billing-cancel"),
    path("billing/stripe/webhook/", views.stripe_webhook, name="billing-stripe-webhook"),
    path("api/v1/billing/", api.BillingView.as_view(), name="api-billing"),
]
