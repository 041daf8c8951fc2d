"""The bot master webhook endpoint (HTTP only; ``bots.services.bot_signal_receive`` does the work)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from bots.services import bot_signal_receive
from webhooks.services import Inbound
from webhooks.views import client_ip


@csrf_exempt
def master_webhook(request, webhook_path: str):
    """``POST /api/v1/bots/webhook/master/<path>``: a TradingView alert for every subscriber of one bot."""
    declared = int(request.META.get("CONTENT_LENGTH") or 0)
    try:
        body = request.body if declared <= settings.WEBHOOK_MAX_BODY_BYTES else b""
    except RequestDataTooBig:
        body = b""
    inbound = Inbound(request=request, method=request.method, path=request.path, body=body,
                      declared_length=declared, source_ip=client_ip(request))
    reply = bot_signal_receive(inbound, webhook_path=webhook_path)
    return JsonResponse(reply.body, status=reply.status, headers={"Allow": "POST"} if reply.status == 405 else None)
