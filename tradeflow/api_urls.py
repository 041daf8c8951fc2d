"""Routes of the customer API, included at ``/api/v1/`` (after the webhook receivers, which stay plain Django).

Every route here must have a row in the tenant-isolation walker's table (tests/test_api_isolation.py); a route
without one fails the suite.
"""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from accounts import api as accounts_api
from bots import api as bots_api
from brokers import api as brokers_api
from risk import api as risk_api
from webhooks import api as webhooks_api

public = {"authentication_classes": [], "permission_classes": []}

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(**public), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema", **public), name="api-docs"),
    path("docs/redoc/", SpectacularRedocView.as_view(url_name="api-schema", **public), name="api-redoc"),
    # broker accounts, positions, orders, executions
    path("accounts/", brokers_api.AccountList.as_view(), name="api-accounts"),
    path("accounts/<int:pk>/", brokers_api.AccountDetail.as_view(), name="api-account"),
    path("accounts/<int:pk>/enable/", brokers_api.AccountEnable.as_view(), name="api-account-enable"),
    path("accounts/<int:pk>/disable/", brokers_api.AccountDisable.as_view(), name="api-account-disable"),
    path("accounts/<int:pk>/regenerate-key/", brokers_api.AccountRegenerateKey.as_view(),
         name="api-account-regenerate-key"),
    path("accounts/<int:pk>/credentials/", brokers_api.AccountCredentials.as_view(), name="api-account-credentials"),
    path("accounts/<int:pk>/kite-login/", brokers_api.AccountKiteLogin.as_view(), name="api-account-kite-login"),
    path("positions/", brokers_api.PositionList.as_view(), name="api-positions"),
    path("positions/<int:pk>/", brokers_api.PositionDetail.as_view(), name="api-position"),
    path("positions/<int:pk>/close/", brokers_api.PositionClose.as_view(), name="api-position-close"),
    path("orders/", brokers_api.OrderList.as_view(), name="api-orders"),
    path("executions/", brokers_api.ExecutionList.as_view(), name="api-executions"),
    path("executions/<int:pk>/", brokers_api.ExecutionDetail.as_view(), name="api-execution"),
    # signals and the webhook log (the receivers are /api/v1/webhooks/..., outside DRF)
    path("signals/", webhooks_api.SignalList.as_view(), name="api-signals"),
    path("signals/<uuid:pk>/", webhooks_api.SignalDetail.as_view(), name="api-signal"),
    path("webhook-log/", webhooks_api.WebhookLogList.as_view(), name="api-webhook-log"),
    path("webhook-log/<int:pk>/", webhooks_api.WebhookLogDetail.as_view(), name="api-webhook-log-entry"),
    # settings, risk rules, stops
    path("settings/trading/", accounts_api.TradingSettingsView.as_view(), name="api-trading-settings"),
    path("risk/config/", risk_api.RiskConfigView.as_view(), name="api-risk-config"),
    path("emergency-stop/", risk_api.EmergencyStop.as_view(), name="api-emergency-stop"),
    path("square-off-all/", risk_api.SquareOffAll.as_view(), name="api-square-off-all"),
    path("kill-switch/", risk_api.KillSwitch.as_view(), name="api-kill-switch"),
    # bots (the master webhook /api/v1/bots/webhook/master/... is outside DRF) and subscriptions
    path("bots/", bots_api.BotList.as_view(), name="api-bots"),
    path("bots/<int:pk>/", bots_api.BotDetail.as_view(), name="api-bot"),
    path("bots/<int:pk>/pause/", bots_api.BotPause.as_view(), name="api-bot-pause"),
    path("bots/<int:pk>/resume/", bots_api.BotResume.as_view(), name="api-bot-resume"),
    path("bots/<int:pk>/rotate-secret/", bots_api.BotRotateSecret.as_view(), name="api-bot-rotate-secret"),
    path("subscriptions/", bots_api.SubscriptionList.as_view(), name="api-subscriptions"),
    path("subscriptions/<int:pk>/", bots_api.SubscriptionDetail.as_view(), name="api-subscription"),
    path("subscriptions/<int:pk>/pause/", bots_api.SubscriptionPause.as_view(), name="api-subscription-pause"),
    path("subscriptions/<int:pk>/resume/", bots_api.SubscriptionResume.as_view(), name="api-subscription-resume"),
    path("subscriptions/<int:pk>/unsubscribe/", bots_api.SubscriptionUnsubscribe.as_view(),
         name="api-subscription-unsubscribe"),
]
