from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("settings/trading/", views.trading_settings, name="trading-settings"),
    path("settings/api-tokens/", views.api_tokens, name="api-tokens"),
    path("settings/api-tokens/<int:pk>/revoke/", views.api_token_revoke_view, name="api-token-revoke"),
]
