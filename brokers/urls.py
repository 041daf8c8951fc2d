from django.urls import path

from brokers import views

urlpatterns = [
    path("brokers/", views.account_list, name="broker-accounts"),
    path("brokers/new/", views.account_new, name="broker-account-new"),
    path("brokers/<int:pk>/", views.account_detail, name="broker-account"),
    path("brokers/<int:pk>/regenerate-key/", views.account_regenerate_key, name="broker-account-regenerate"),
    path("brokers/<int:pk>/toggle/", views.account_toggle, name="broker-account-toggle"),
    path("positions/", views.position_list, name="positions"),
    path("positions/<int:pk>/close/", views.position_close_view, name="position-close"),
    path("orders/", views.order_list, name="orders"),
    path("executions/", views.execution_list, name="executions"),
    path("webhook-log/", views.webhook_log, name="webhook-log"),
]
