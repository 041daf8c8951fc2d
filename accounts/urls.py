from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("settings/trading/", views.trading_settings, name="trading-settings"),
]
