"""ASGI entry point: HTTP goes to Django (webhook POSTs to their receivers), websockets to Channels consumers."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeflow.settings")
os.environ.setdefault("TRADEFLOW_PROCESS", "web")  # settings: database connection pool for the web server
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from tradeflow.routing import websocket_urlpatterns  # noqa: E402
from tradeflow.startup import freeze_startup_objects  # noqa: E402
from webhooks.asgi import WebhookRouter  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Webhook POSTs are answered by the receive services directly (webhooks/asgi.py); the rest is Django.
        "http": WebhookRouter(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

# The URL patterns are resolved lazily; load them now, so they are frozen with the rest of the startup objects.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018
freeze_startup_objects()
