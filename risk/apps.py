from django.apps import AppConfig


class RiskAppConfig(AppConfig):
    name = "risk"
