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
from brokers.services import api_key_authenticate_many
from tradeflow.cache import SharedRedisCache, add_many
from tradeflow.fastinsert import insert, insert_many, insert_together
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
    """django-ratelimit's fixed window per ``key``, counting this request: whether it is over the ``rate``."""
    return rate_limited_many([inbound], [key], rate, group)[0]


def rate_limited_many(inbounds: list[Inbound], keys: list[str], rate: str, group: str) -> list[bool]:
    """``rate_limited`` for requests that arrived together; on Redis in one pipelined round trip for all of them.

    ``is_ratelimited`` does ``cache.add(key, 1, ttl)`` and, when the key exists, ``cache.incr(key)``: two
    round trips per request. On the shared Redis cache the same thing is ``SET key 0 EX ttl NX`` + ``INCR key``,
    pipelined, with django-ratelimit's own rate parsing, window (with its per-key jitter), cache key and TTL,
    so both paths count in the same Redis key and trip at the same request.
    """
    if not inbounds:
        return []
    limiter_cache = caches[getattr(settings, "RATELIMIT_USE_CACHE", "default")]
    if not isinstance(limiter_cache, SharedRedisCache) or not getattr(settings, "RATELIMIT_ENABLE", True):
        out = []
        for inbound, key in zip(inbounds, keys, strict=True):
            request = inbound.request
            if request is None:  # an alert that came the ASGI way (webhooks/asgi.py): the limiter only needs a request
                request = HttpRequest()
                request.META["REMOTE_ADDR"] = inbound.source_ip or ""
            out.append(is_ratelimited(request, group=group, key=lambda _g, _r, key=key: key, rate=rate,
                                      increment=True))
        return out
    limit, period = ratelimit_core._split_rate(rate)
    pipe = limiter_cache._cache.get_client(write=True).pipeline(transaction=False)
    for key in keys:
        window = ratelimit_core._get_window(key, period)
        cache_key = limiter_cache.make_and_validate_key(
            ratelimit_core._make_cache_key(group, window, rate, key, ratelimit_core.ALL))
        pipe.set(cache_key, 0, ex=period + ratelimit_core.EXPIRATION_FUDGE, nx=True)
        pipe.incr(cache_key)
    return [count > limit for count in pipe.execute()[1::2]]


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


def refused_payload(inbound: Inbound, data, payload_text: str) -> str:
    """What a refused request's log row keeps: the stored JSON, or the raw text when the body was not JSON."""
    if data is None and not payload_text:
        return redact(inbound.body[:2000].decode("utf-8", "replace"))
    return payload_text


def error_reply(inbound: Inbound, exc: WebhookError, *, data, payload_text: str, **target) -> Reply:
    """The answer to a refused request, and its log row."""
    reply = Reply(exc.status, exc.body())
    log_request(inbound, reply, signal=None, payload=refused_payload(inbound, data, payload_text),
                error=exc.message, **target)
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
    return webhook_receive_many([inbound])[0]


def webhook_receive_many(inbounds: list[Inbound]) -> list[Reply]:
    """Handle account webhook requests that arrived together (``webhooks/asgi.py`` collects them), each answered
    as if it had come alone: the same checks, replies and log rows in the same order of precedence. What they
    share is the round trips: one rate-limit pipeline, one key lookup, one de-duplication pipeline, one statement
    that stores every signal, execution and log row, one drain message."""
    return _receive_many([_Alert(inbound) for inbound in inbounds])


def test_alert_send(*, account: BrokerAccount, body: str, source_ip: str | None) -> Reply:
    """The account page's "send test alert" for a signed-in owner who no longer has the key (it is shown once):
    the sample goes through the same validation, de-duplication, storage, log row and execution as an alert
    from TradingView; only the key check is replaced by the page's own login. Paper accounts only (the caller
    checks): on a live account a sample would be a real order."""
    data = body.encode()
    inbound = Inbound(request=None, method="POST", path="/api/v1/webhooks (test alert from the account page)",
                      body=data, declared_length=len(data), source_ip=source_ip)
    return _receive_many([_Alert(inbound)], account=account)[0]


@dataclass(eq=False)
class _Alert:
    """One request on its way through ``_receive_many``: settled once ``reply`` is set (with its ``log`` row)."""

    inbound: Inbound
    data: object = None
    payload_text: str = ""
    raw_key: str = ""
    account: BrokerAccount | None = None
    intent: dict | None = None
    client_id: str = ""
    body_hash: str = ""
    signal_id: uuid.UUID | None = None
    claim: str = ""  # the de-duplication key this request set, removed again if its signal is not stored
    reply: Reply | None = None
    log: dict | None = None

    def refuse(self, exc: WebhookError) -> None:
        self.reply = Reply(exc.status, exc.body())
        self.log = log_values(self.inbound, self.reply, signal=None, error=exc.message, account=self.account,
                              payload=refused_payload(self.inbound, self.data, self.payload_text))

    def duplicate_of(self, signal_id: str) -> None:
        self.reply = _duplicate_reply(signal_id)
        self.log = log_values(self.inbound, self.reply, signal=None, payload=self.payload_text,
                              error="duplicate alert", account=self.account)


def _open(alerts: list[_Alert]) -> list[_Alert]:
    return [alert for alert in alerts if alert.reply is None]


def _receive_many(alerts: list[_Alert], account: BrokerAccount | None = None) -> list[Reply]:
    for alert in alerts:
        try:
            check_request(alert.inbound)
            alert.data = parse_json(alert.inbound.body)
            alert.payload_text = stored_payload(alert.data)
            alert.raw_key = _presented_key(alert.inbound, alert.data)
        except WebhookError as exc:
            alert.refuse(exc)
    if account is None:
        _authenticate_many(_open(alerts))
    else:
        for alert in _open(alerts):
            alert.account = account
    for alert in _open(alerts):
        try:
            if not alert.account.enabled:
                raise WebhookError(403, "account_disabled", f"Account {alert.account.label} is disabled: "
                                   "enable it in TradeFlow to accept alerts")
            try:
                alert.intent = parse_account_payload(alert.data, account_broker=alert.account.broker)
                alert.client_id = client_id_of(alert.data)
            except PayloadError as exc:
                raise invalid_fields(exc, alert.data) from exc
        except WebhookError as exc:
            alert.refuse(exc)
    _claim_many(_open(alerts))
    _store_many(alerts)
    return [alert.reply for alert in alerts]


def _authenticate_many(alerts: list[_Alert]) -> None:
    """The per-key limit, then the key lookup; unknown keys are also limited per source IP, so guessing is slow."""
    key_ids = [hashlib.sha256(alert.raw_key.encode()).hexdigest()[:32] for alert in alerts]
    limited = rate_limited_many([alert.inbound for alert in alerts], key_ids, settings.WEBHOOK_RATE_LIMIT,
                                "webhook.key")
    for alert, over in zip(alerts, limited, strict=True):
        if over:
            alert.refuse(WebhookError(429, "rate_limited", f"Too many alerts for this key (limit "
                                      f"{settings.WEBHOOK_RATE_LIMIT}); slow down and retry"))
    alerts = _open(alerts)
    accounts = api_key_authenticate_many({alert.raw_key for alert in alerts})
    unknown = [alert for alert in alerts if alert.raw_key not in accounts]
    guessing = rate_limited_many([alert.inbound for alert in unknown],
                                 [alert.inbound.source_ip or "unknown" for alert in unknown],
                                 settings.WEBHOOK_UNKNOWN_KEY_RATE_LIMIT, "webhook.badkey")
    for alert, over in zip(unknown, guessing, strict=True):
        if over:
            alert.refuse(WebhookError(429, "rate_limited", "Too many requests with invalid API keys from this address"))
        else:
            alert.refuse(WebhookError(401, "unauthorized", "Missing or unknown API key: put it in the URL "
                                      "(/api/v1/webhooks/<key>), an 'Authorization: Bearer <key>' header or an "
                                      "\"api_key\" field"))
    for alert in alerts:
        if alert.reply is None:
            alert.account = accounts[alert.raw_key]


def _claim_many(alerts: list[_Alert]) -> None:
    """De-duplication: each alert claims its key in the cache (explicit ``id``, else the body hash within
    ``WEBHOOK_DEDUPE_SECONDS``); one whose key is taken is a duplicate of the signal the key names. The second of two
    identical alerts in one batch is the first one's duplicate."""
    entries = []
    for alert in alerts:
        alert.body_hash = hashlib.sha256(alert.inbound.body).hexdigest()
        alert.signal_id = uuid.uuid4()
        key, ttl = dedupe_key(str(alert.account.pk), alert.client_id, alert.body_hash)
        entries.append((key, str(alert.signal_id), ttl))
    claimed = add_many(caches["default"], entries)  # the backend itself, not the proxy
    taken = {key for (key, _, _), won in zip(entries, claimed, strict=True) if not won}
    previous = cache.get_many(list(taken)) if taken else {}
    for alert, (key, _, _), won in zip(alerts, entries, claimed, strict=True):
        if won:
            alert.claim = key
        elif previous.get(key):
            alert.duplicate_of(previous[key])
        # else: the claim expired between the two round trips; the database's unique id is the last word


def _store_many(alerts: list[_Alert]) -> None:
    """Every accepted signal with its execution and log row, and every other request's log row, all or nothing (on
    PostgreSQL one statement); the executions are enqueued on commit. A unique-constraint violation (an explicit id
    used before the cache's memory) sends the batch through ``_store_one`` alert by alert."""
    accepted = _open(alerts)
    logs = [alert.log for alert in alerts if alert.log is not None]  # the refused and the duplicates
    for alert in accepted:
        alert.reply = Reply(202, {"signal_id": str(alert.signal_id), "status": "accepted"})
    if not accepted:
        insert_many([(WebhookLog, logs)], savepoint=False)
        return
    try:
        _, executions, _ = insert_many([
            (Signal, [_signal_values(alert) for alert in accepted]),
            (Execution, [_execution_values(alert) for alert in accepted]),
            (WebhookLog, logs + [_accepted_log(alert) for alert in accepted]),
        ])
    except IntegrityError:
        insert_many([(WebhookLog, logs)], savepoint=False)
        for alert in accepted:
            _store_one(alert)
        return
    except Exception:
        _release(accepted)
        raise
    _enqueue([(alert, execution) for alert, execution in zip(accepted, executions, strict=True)])


def _store_one(alert: _Alert) -> None:
    try:
        _, execution, _ = insert_together((Signal, _signal_values(alert)), (Execution, _execution_values(alert)),
                                          (WebhookLog, _accepted_log(alert)))
    except IntegrityError:
        _release([alert])
        found = None
        if alert.client_id:
            found = (Signal.objects.filter(account=alert.account, client_id=alert.client_id)
                     .values_list("id", flat=True).first())
        if found is None:
            raise
        alert.duplicate_of(str(found))
        insert(WebhookLog, **alert.log)
        return
    except Exception:
        _release([alert])
        raise
    _enqueue([(alert, execution)])


def _release(alerts: list[_Alert]) -> None:
    claims = [alert.claim for alert in alerts if alert.claim]
    if claims:
        cache.delete_many(claims)


def _signal_values(alert: _Alert) -> dict:
    return dict(id=alert.signal_id, account=alert.account, format=alert.intent["format"], client_id=alert.client_id,
                body_hash=alert.body_hash, payload=json.loads(alert.payload_text), intent=alert.intent,
                source_ip=alert.inbound.source_ip, received_at=alert.inbound.received_at,
                ack_ms=elapsed_ms(alert.inbound))


def _execution_values(alert: _Alert) -> dict:
    # What execution_create_for_signal stores, with the signal's id known up front (a client-made UUID).
    return dict(signal_id=alert.signal_id, account=alert.account, kind=Execution.Kind.SIGNAL, intent=alert.intent)


def _accepted_log(alert: _Alert) -> dict:
    return log_values(alert.inbound, alert.reply, account=alert.account, signal=None, signal_id=alert.signal_id,
                      payload=alert.payload_text)


def _enqueue(stored: list[tuple[_Alert, Execution]]) -> None:
    """After the commit: paper entries are drained with the alerts queued beside them (adaptive batches; one drain
    message for all of them, unless one is queued already); anything else runs alone."""
    from brokers.services.batch import drains
    from brokers.tasks import execution_run_task, executions_drain_enqueue
    from tradeflow.queue import enqueue

    drained = {execution.pk for alert, execution in stored if drains(alert.account, alert.intent)}
    if drained:
        executions_drain_enqueue(min(drained))
    for _, execution in stored:
        if execution.pk not in drained:
            enqueue(execution_run_task, execution.pk)


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
