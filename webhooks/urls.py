from django.urls import path, re_path

from webhooks import views

urlpatterns = [
    re_path(r"^api/v1/webhooks/?$", views.account_webhook, name="account-webhook"),
    re_path(r"^api/v1/webhooks/(?P<api_key>[A-Za-z0-9_\-]{1,200})/?$", views.account_webhook,
            name="account-webhook-key"),
]
_ = path
