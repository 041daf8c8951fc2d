"""Receive an account webhook: authenticate, validate, de-duplicate, store, enqueue, answer.

No broker call happens here. The signal, its execution and the log row are written in one transaction
and the task is enqueued on commit, so an acknowledged alert is never lost and never half-stored.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_ratelimit.core import is_ratelimited

from brokers.models import BrokerAccount
from brokers.services import api_key_authenticate, execution_create_for_signal
from tradeflow.logging import redact
from webhooks.formats import PayloadError, client_id_of, parse_account_payload, redact_payload
from webhooks.models import Signal, WebhookLog


class WebhookError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "fields": self.fields}}


@dataclass
class Inbound:
    request: object  # the HttpRequest, for django-ratelimit
    method: str
    path: str
    body: bytes
    source_ip: str | None
    path_key: str = ""
    bearer: str = ""
    declared_length: int = 0
    started: float = field(default_factory=time.perf_counter)
    received_at: datetime = field(default_factory=timezone.now)


@dataclass
class Reply:
    status: int
    body: dict


def _elapsed_ms(inbound: Inbound) -> Decimal:
    return Decimal((time.perf_counter() - inbound.started) * 1000).quantize(Decimal("0.01"))


def parse_json(body: bytes):
    """JSON whatever the Content-Type (TradingView sends text/plain unless the message is valid JSON)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WebhookError(400, "malformed_json", f"Body is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise WebhookError(400, "malformed_json", "Body is empty: send the alert as JSON")
    try:
        # NaN/Infinity become Decimals, so a field check names them ("must be a finite number") and the
        # stored payload stays valid JSON (PostgreSQL's jsonb refuses a bare NaN).
        return json.loads(text, parse_float=Decimal, parse_constant=Decimal)
    except json.JSONDecodeError as exc:
        raise WebhookError(400, "malformed_json",
                           f"Body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting too deep
        raise WebhookError(400, "malformed_json", f"Body is not usable JSON: {str(exc)[:120]}") from exc


def _rate_limited(inbound: Inbound, key: str, rate: str, group: str) -> bool:
    return is_ratelimited(inbound.request, group=group, key=lambda _g, _r: key, rate=rate, increment=True)


def _presented_key(inbound: Inbound, data) -> str:
    if inbound.path_key:
        return inbound.path_key
    if inbound.bearer:
        return inbound.bearer
    if isinstance(data, dict) and isinstance(data.get("api_key"), str):
        return data["api_key"]
    return ""


def _authenticate(inbound: Inbound, data) -> BrokerAccount:
    raw_key = _presented_key(inbound, data)
    key_id = hashlib.sha256(raw_key.encode()).hexdigest()[:32]
    if _rate_limited(inbound, key_id, settings.WEBHOOK_RATE_LIMIT, "webhook.key"):
        raise WebhookError(429, "rate_limited",
                           f"Too many alerts for this key (limit {settings.WEBHOOK_RATE_LIMIT}); slow down and retry")
    account = api_key_authenticate(raw_key)
    if account is None:
        # Unknown keys are also limited per source IP, so guessing keys is slow.
        ip_key = inbound.source_ip or "unknown"
        if _rate_limited(inbound, ip_key, settings.WEBHOOK_UNKNOWN_KEY_RATE_LIMIT, "webhook.badkey"):
            raise WebhookError(429, "rate_limited", "Too many requests with invalid API keys from this address")
        raise WebhookError(401, "unauthorized",
                           "Missing or unknown API key: put it in the URL (/api/v1/webhooks/<key>), an "
                           "'Authorization: Bearer <key>' header or an \"api_key\" field")
    return account


def _dedupe_cache_key(account: BrokerAccount, client_id: str, body_hash: str) -> tuple[str, int]:
    if client_id:
        return f"wh:dd:{account.pk}:id:{hashlib.sha256(client_id.encode()).hexdigest()[:32]}", 86400
    return f"wh:dd:{account.pk}:h:{body_hash}", settings.WEBHOOK_DEDUPE_SECONDS


def _duplicate_reply(signal_id: str) -> Reply:
    return Reply(200, {"signal_id": signal_id, "status": "accepted", "duplicate": True})


def _log(inbound: Inbound, reply: Reply, *, account: BrokerAccount | None, signal: Signal | None, payload: str,
         error: str = "") -> WebhookLog:
    return WebhookLog.objects.create(
        account=account, signal=signal, method=inbound.method, path=redact(inbound.path)[:300],
        source_ip=inbound.source_ip, status=reply.status, payload=payload, response=reply.body,
        latency_ms=_elapsed_ms(inbound), error=error,
    )


def _stored_payload(data) -> str:
    return json.dumps(redact_payload(data), default=str)[: settings.WEBHOOK_MAX_BODY_BYTES]


def webhook_receive(inbound: Inbound) -> Reply:
    """Handle one account webhook request end to end (the view only translates HTTP)."""
    account, data, payload_text = None, None, ""
    try:
        if inbound.method != "POST":
            raise WebhookError(405, "method_not_allowed", f"{inbound.method} is not accepted: send alerts with POST")
        size = max(len(inbound.body), inbound.declared_length)
        if size > settings.WEBHOOK_MAX_BODY_BYTES:
            raise WebhookError(413, "payload_too_large",
                               f"Body is {size} bytes; the limit is {settings.WEBHOOK_MAX_BODY_BYTES} (64 KiB)")
        data = parse_json(inbound.body)
        payload_text = _stored_payload(data)
        account = _authenticate(inbound, data)
        if not account.enabled:
            raise WebhookError(403, "account_disabled",
                               f"Account {account.label} is disabled: enable it in TradeFlow to accept alerts")
        try:
            intent = parse_account_payload(data, account_broker=account.broker)
            client_id = client_id_of(data)
        except PayloadError as exc:
            fields = dict(exc.fields)
            try:  # name a bad `id` too, so one answer lists every field to fix
                client_id_of(data)
            except PayloadError as id_exc:
                fields.update(id_exc.fields)
            error = PayloadError(fields)
            raise WebhookError(422, "invalid_fields", f"The alert has invalid fields: {error}", fields) from exc
        return _accept(inbound, account, data, intent, client_id, payload_text)
    except WebhookError as exc:
        reply = Reply(exc.status, exc.body())
        if data is None and not payload_text:
            payload_text = redact(inbound.body[:2000].decode("utf-8", "replace"))
        _log(inbound, reply, account=account, signal=None, payload=payload_text, error=exc.message)
        return reply


def _accept(inbound: Inbound, account: BrokerAccount, data, intent: dict, client_id: str,
            payload_text: str) -> Reply:
    from brokers.tasks import execution_run_task
    from tradeflow.queue import enqueue

    body_hash = hashlib.sha256(inbound.body).hexdigest()
    dedupe_key, ttl = _dedupe_cache_key(account, client_id, body_hash)
    signal_id = uuid.uuid4()
    if not cache.add(dedupe_key, str(signal_id), ttl):
        previous = cache.get(dedupe_key)
        if previous:
            reply = _duplicate_reply(previous)
            _log(inbound, reply, account=account, signal=None, payload=payload_text, error="duplicate alert")
            return reply
    reply = Reply(202, {"signal_id": str(signal_id), "status": "accepted"})
    try:
        with transaction.atomic():
            signal = Signal.objects.create(
                id=signal_id, account=account, format=intent["format"], client_id=client_id, body_hash=body_hash,
                payload=json.loads(payload_text), intent=intent, source_ip=inbound.source_ip,
                received_at=inbound.received_at,
                ack_ms=_elapsed_ms(inbound),
            )
            execution = execution_create_for_signal(signal=signal, account=account)
            _log(inbound, reply, account=account, signal=signal, payload=payload_text)
            enqueue(execution_run_task, execution.pk)
    except IntegrityError:
        # The explicit id was used before (beyond the cache's memory): the database is the authority.
        cache.delete(dedupe_key)
        existing = Signal.objects.filter(account=account, client_id=client_id).values_list("id", flat=True).first()
        if existing is None:
            raise
        reply = _duplicate_reply(str(existing))
        _log(inbound, reply, account=account, signal=None, payload=payload_text, error="duplicate alert")
        return reply
    except Exception:
        cache.delete(dedupe_key)
        raise
    return reply
