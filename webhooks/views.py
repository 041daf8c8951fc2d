from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from webhooks.services import Inbound, webhook_receive


def client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


@csrf_exempt
def account_webhook(request, api_key: str = ""):
    """``POST /api/v1/webhooks[/<api_key>]``: a TradingView (or any HTTP client) alert for one account."""
    auth = request.headers.get("Authorization", "")
    declared = int(request.META.get("CONTENT_LENGTH") or 0)
    try:
        # Never buffer a body we are going to refuse anyway.
        body = request.body if declared <= settings.WEBHOOK_MAX_BODY_BYTES else b""
    except RequestDataTooBig:
        body = b""
    inbound = Inbound(
        request=request, method=request.method, path=request.path, body=body, declared_length=declared,
        source_ip=client_ip(request), path_key=api_key,
        bearer=auth[7:].strip() if auth[:7].lower() == "bearer " else "",
    )
    reply = webhook_receive(inbound)  # answers 405 (and logs it) for anything but POST
    return JsonResponse(reply.body, status=reply.status, headers={"Allow": "POST"} if reply.status == 405 else None)
