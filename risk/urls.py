from django.urls import path

from risk import views

urlpatterns = [
    path("settings/risk/", views.risk_settings, name="risk-settings"),
    path("emergency-stop/", views.emergency_stop_view, name="emergency-stop"),
    path("positions/square-off-all/", views.square_off_all_view, name="square-off-all"),
    path("brokers/<int:pk>/mode/", views.account_mode, name="broker-account-mode"),
]
