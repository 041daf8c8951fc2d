"""Receive an account webhook: authenticate, validate, de-duplicate, store, enqueue, answer.

The shared pieces (request checks, JSON, rate limits, de-duplication, the log row) are also what the bot
master webhook (``bots/services.py``) is made of.

No broker call happens here. The signal, its execution and the log row are written in one transaction
and the task is enqueued on commit, so an acknowledged alert is never lost and never half-stored.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache, caches
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone
from django_ratelimit import core as ratelimit_core
from django_ratelimit.core import is_ratelimited

from brokers.models import BrokerAccount, Execution
from brokers.services import api_key_authenticate
from tradeflow.cache import SharedRedisCache
from tradeflow.fastinsert import insert, insert_together
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
    request: object  # the HttpRequest, for django-ratelimit (None on the ASGI path, webhooks/asgi.py)
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


def elapsed_ms(inbound: Inbound) -> Decimal:
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


def rate_limited(inbound: Inbound, key: str, rate: str, group: str) -> bool:
    """django-ratelimit's fixed window per ``key``; on Redis in one pipelined round trip instead of two.

    ``is_ratelimited`` does ``cache.add(key, 1, ttl)`` and, when the key exists, ``cache.incr(key)``: two
    round trips. On the shared Redis cache the same thing is ``SET key 0 EX ttl NX`` + ``INCR key`` in one
    pipeline, with django-ratelimit's own rate parsing, window (with its per-key jitter), cache key and TTL,
    so both paths count in the same Redis key and trip at the same request.
    """
    limiter_cache = caches[getattr(settings, "RATELIMIT_USE_CACHE", "default")]
    if not isinstance(limiter_cache, SharedRedisCache) or not getattr(settings, "RATELIMIT_ENABLE", True):
        request = inbound.request
        if request is None:  # an alert that came the ASGI way (webhooks/asgi.py): the limiter only needs a request
            request = HttpRequest()
            request.META["REMOTE_ADDR"] = inbound.source_ip or ""
        return is_ratelimited(request, group=group, key=lambda _g, _r: key, rate=rate, increment=True)
    limit, period = ratelimit_core._split_rate(rate)
    window = ratelimit_core._get_window(key, period)
    cache_key = limiter_cache.make_and_validate_key(
        ratelimit_core._make_cache_key(group, window, rate, key, ratelimit_core.ALL))
    pipe = limiter_cache._cache.get_client(write=True).pipeline(transaction=False)
    pipe.set(cache_key, 0, ex=period + ratelimit_core.EXPIRATION_FUDGE, nx=True)
    pipe.incr(cache_key)
    _, count = pipe.execute()
    return count > limit


def check_request(inbound: Inbound) -> None:
    """What is refused before the body is even parsed: a method other than POST, a body over the limit."""
    if inbound.method != "POST":
        raise WebhookError(405, "method_not_allowed", f"{inbound.method} is not accepted: send alerts with POST")
    size = max(len(inbound.body), inbound.declared_length)
    if size > settings.WEBHOOK_MAX_BODY_BYTES:
        raise WebhookError(413, "payload_too_large",
                           f"Body is {size} bytes; the limit is {settings.WEBHOOK_MAX_BODY_BYTES} (64 KiB)")


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
    if rate_limited(inbound, key_id, settings.WEBHOOK_RATE_LIMIT, "webhook.key"):
        raise WebhookError(429, "rate_limited",
                           f"Too many alerts for this key (limit {settings.WEBHOOK_RATE_LIMIT}); slow down and retry")
    account = api_key_authenticate(raw_key)
    if account is None:
        # Unknown keys are also limited per source IP, so guessing keys is slow.
        ip_key = inbound.source_ip or "unknown"
        if rate_limited(inbound, ip_key, settings.WEBHOOK_UNKNOWN_KEY_RATE_LIMIT, "webhook.badkey"):
            raise WebhookError(429, "rate_limited", "Too many requests with invalid API keys from this address")
        raise WebhookError(401, "unauthorized",
                           "Missing or unknown API key: put it in the URL (/api/v1/webhooks/<key>), an "
                           "'Authorization: Bearer <key>' header or an \"api_key\" field")
    return account


def dedupe_key(target: str, client_id: str, body_hash: str) -> tuple[str, int]:
    """The cache key and lifetime that make an alert count once per target (an account id, or ``bot<id>``)."""
    if client_id:
        return f"wh:dd:{target}:id:{hashlib.sha256(client_id.encode()).hexdigest()[:32]}", 86400
    return f"wh:dd:{target}:h:{body_hash}", settings.WEBHOOK_DEDUPE_SECONDS


def _duplicate_reply(signal_id: str) -> Reply:
    return Reply(200, {"signal_id": signal_id, "status": "accepted", "duplicate": True})


def log_values(inbound: Inbound, reply: Reply, *, signal: Signal | None, payload: str, error: str = "",
               account: BrokerAccount | None = None, bot=None, signal_id=None) -> dict:
    """The fields of a request's log row (``signal_id`` for a signal stored in the same statement)."""
    values = dict(account=account, bot=bot, method=inbound.method, path=redact(inbound.path)[:300],
                  source_ip=inbound.source_ip, status=reply.status, payload=payload, response=reply.body,
                  latency_ms=elapsed_ms(inbound), error=error)
    if signal_id is not None:
        values["signal_id"] = signal_id
    else:
        values["signal"] = signal
    return values


def log_request(inbound: Inbound, reply: Reply, *, signal: Signal | None, payload: str, error: str = "",
                account: BrokerAccount | None = None, bot=None) -> WebhookLog:
    return insert(WebhookLog, **log_values(inbound, reply, signal=signal, payload=payload, error=error,
                                           account=account, bot=bot))


def stored_payload(data) -> str:
    return json.dumps(redact_payload(data), default=str)[: settings.WEBHOOK_MAX_BODY_BYTES]


def error_reply(inbound: Inbound, exc: WebhookError, *, data, payload_text: str, **target) -> Reply:
    """The answer to a refused request, and its log row (the raw text when the body was not JSON)."""
    reply = Reply(exc.status, exc.body())
    if data is None and not payload_text:
        payload_text = redact(inbound.body[:2000].decode("utf-8", "replace"))
    log_request(inbound, reply, signal=None, payload=payload_text, error=exc.message, **target)
    return reply


def invalid_fields(exc: PayloadError, data) -> WebhookError:
    """A 422 naming every bad field, a bad ``id`` included, so one answer lists everything to fix."""
    fields = dict(exc.fields)
    try:
        client_id_of(data)
    except PayloadError as id_exc:
        fields.update(id_exc.fields)
    error = PayloadError(fields)
    return WebhookError(422, "invalid_fields", f"The alert has invalid fields: {error}", fields)


def webhook_receive(inbound: Inbound) -> Reply:
    """Handle one account webhook request end to end (the view only translates HTTP)."""
    return _receive(inbound, lambda data: _authenticate(inbound, data))


def test_alert_send(*, account: BrokerAccount, body: str, source_ip: str | None) -> Reply:
    """The account page's "send test alert" for a signed-in owner who no longer has the key (it is shown once):
    the sample goes through the same validation, de-duplication, storage, log row and execution as an alert
    from TradingView; only the key check is replaced by the page's own login. Paper accounts only (the caller
    checks): on a live account a sample would be a real order."""
    data = body.encode()
    inbound = Inbound(request=None, method="POST", path="/api/v1/webhooks (test alert from the account page)",
                      body=data, declared_length=len(data), source_ip=source_ip)
    return _receive(inbound, lambda _data: account)


def _receive(inbound: Inbound, target: Callable[[object], BrokerAccount]) -> Reply:
    account, data, payload_text = None, None, ""
    try:
        check_request(inbound)
        data = parse_json(inbound.body)
        payload_text = stored_payload(data)
        account = target(data)
        if not account.enabled:
            raise WebhookError(403, "account_disabled",
                               f"Account {account.label} is disabled: enable it in TradeFlow to accept alerts")
        try:
            intent = parse_account_payload(data, account_broker=account.broker)
            client_id = client_id_of(data)
        except PayloadError as exc:
            raise invalid_fields(exc, data) from exc
        return _accept(inbound, account, intent, client_id, payload_text)
    except WebhookError as exc:
        return error_reply(inbound, exc, data=data, payload_text=payload_text, account=account)


def accept_once(inbound: Inbound, *, target: str, client_id: str, payload_text: str, log_target: dict,
                store: Callable[[uuid.UUID, str], Reply], existing: Callable[[], object],
                atomic: bool = True) -> Reply:
    """Store an alert once: the shared de-duplication of account and bot webhooks.

    The cache claims the alert (explicit ``id``, else the body hash within ``WEBHOOK_DEDUPE_SECONDS``); ``store``
    writes the signal, its rows and the log in one transaction and enqueues on commit (``atomic=False``: ``store``
    makes its writes all or nothing itself). A unique-constraint violation means the explicit id was used before
    the cache's memory: ``existing`` finds that signal's id.
    """
    body_hash = hashlib.sha256(inbound.body).hexdigest()
    key, ttl = dedupe_key(target, client_id, body_hash)
    signal_id = uuid.uuid4()
    if not cache.add(key, str(signal_id), ttl):
        previous = cache.get(key)
        if previous:
            reply = _duplicate_reply(previous)
            log_request(inbound, reply, signal=None, payload=payload_text, error="duplicate alert", **log_target)
            return reply
    try:
        with transaction.atomic() if atomic else nullcontext():
            reply = store(signal_id, body_hash)
    except IntegrityError:
        cache.delete(key)
        found = existing() if client_id else None
        if found is None:
            raise
        reply = _duplicate_reply(str(found))
        log_request(inbound, reply, signal=None, payload=payload_text, error="duplicate alert", **log_target)
        return reply
    except Exception:
        cache.delete(key)
        raise
    return reply


def _accept(inbound: Inbound, account: BrokerAccount, intent: dict, client_id: str, payload_text: str) -> Reply:
    from brokers.services.batch import drains
    from brokers.tasks import execution_run_task, executions_drain_enqueue
    from tradeflow.queue import enqueue

    def store(signal_id: uuid.UUID, body_hash: str) -> Reply:
        """Signal, execution and log row all or nothing (on PostgreSQL one statement), then enqueue on commit."""
        reply = Reply(202, {"signal_id": str(signal_id), "status": "accepted"})
        signal_values = dict(
            id=signal_id, account=account, format=intent["format"], client_id=client_id, body_hash=body_hash,
            payload=json.loads(payload_text), intent=intent, source_ip=inbound.source_ip,
            received_at=inbound.received_at, ack_ms=elapsed_ms(inbound),
        )
        # What execution_create_for_signal stores, with the signal's id known up front (a client-made UUID).
        execution_values = dict(signal_id=signal_id, account=account, kind=Execution.Kind.SIGNAL, intent=intent)
        _, execution, _ = insert_together(
            (Signal, signal_values), (Execution, execution_values),
            (WebhookLog, log_values(inbound, reply, account=account, signal=None, signal_id=signal_id,
                                    payload=payload_text)),
        )
        # A paper entry is drained with the alerts queued beside it (adaptive batches); anything else runs alone.
        if drains(account, intent):
            executions_drain_enqueue(execution.pk)
        else:
            enqueue(execution_run_task, execution.pk)
        return reply

    def existing():
        return Signal.objects.filter(account=account, client_id=client_id).values_list("id", flat=True).first()

    return accept_once(inbound, target=str(account.pk), client_id=client_id, payload_text=payload_text,
                       log_target={"account": account}, store=store, existing=existing, atomic=False)
