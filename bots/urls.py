from django.urls import path, re_path

from bots import api, views

urlpatterns = [
    re_path(r"^api/v1/bots/webhook/master/(?P<webhook_path>[A-Za-z0-9_\-]{1,200})/?$", api.master_webhook,
            name="bot-master-webhook"),
    path("bots/", views.bot_list, name="bots"),
    path("bots/subscriptions/", views.subscription_list, name="bot-subscriptions"),
    path("bots/subscriptions/<int:pk>/<str:action>/", views.subscription_action, name="bot-subscription-action"),
    path("bots/<int:pk>/", views.bot_detail, name="bot"),
    path("bots/<int:pk>/subscribe/", views.subscribe, name="bot-subscribe"),
    path("admin-tools/bots/<int:pk>/", views.bot_admin_page, name="bot-admin-page"),
]
