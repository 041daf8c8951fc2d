from django.urls import path

from brokers import views

urlpatterns = [
    path("brokers/", views.account_list, name="broker-accounts"),
    path("brokers/new/", views.account_new, name="broker-account-new"),
    path("brokers/connect/kite/", views.kite_connect, name="broker-connect-kite"),
    path("brokers/connect/binance/", views.binance_connect, name="broker-connect-binance"),
    path("brokers/kite/callback/", views.kite_callback, name="broker-kite-callback"),
    path("brokers/<int:pk>/", views.account_detail, name="broker-account"),
    path("brokers/<int:pk>/kite/login/", views.kite_login, name="broker-kite-login"),
    path("brokers/<int:pk>/options/", views.account_options, name="broker-account-options"),
    path("brokers/<int:pk>/credentials/", views.account_credentials, name="broker-account-credentials"),
    path("brokers/<int:pk>/regenerate-key/", views.account_regenerate_key, name="broker-account-regenerate"),
    path("brokers/<int:pk>/toggle/", views.account_toggle, name="broker-account-toggle"),
    path("brokers/<int:pk>/webhook-copied/", views.webhook_copied, name="broker-account-webhook-copied"),
    path("brokers/<int:pk>/test-alert/", views.account_test_alert, name="broker-account-test-alert"),
    path("positions/", views.position_list, name="positions"),
    path("positions/<int:pk>/close/", views.position_close_view, name="position-close"),
    path("orders/", views.order_list, name="orders"),
    path("executions/", views.execution_list, name="executions"),
    path("webhook-log/", views.webhook_log, name="webhook-log"),
    path("webhook-log/<int:pk>/", views.webhook_log_detail, name="webhook-log-detail"),
    path("live/", views.admin_live, name="admin-live"),
]
