"""Bots and subscriptions: create, rotate, pause, subscribe; the effective config of one subscriber.

The master webhook (``bot_signal_receive``) is here too, the fan-out in ``bots/fanout.py``; views, admin actions,
tasks and ``seed_demo`` all call these functions.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.text import slugify

from accounts.services import audit_record
from bots.models import Bot, Subscription
from brokers.models import Broker, BrokerAccount
from webhooks import services as webhook_services
from webhooks.formats import PayloadError, client_id_of, parse_bot
from webhooks.models import Signal
from webhooks.services import (
    Inbound,
    Reply,
    WebhookError,
    accept_once,
    check_request,
    error_reply,
    invalid_fields,
    log_request,
    parse_json,
    rate_limited,
    stored_payload,
)

SECRET_BYTES = 32  # 256 bits: TradingView cannot sign, so the secret in the body is the whole authentication


def _new_secret() -> str:
    return "bot_" + secrets.token_urlsafe(SECRET_BYTES)


def _new_path(name: str) -> str:
    # Readable, plus a random part so paths are not guessable from a bot's name.
    base = slugify(name)[:40].strip("-") or "bot"
    return f"{base}-{secrets.token_hex(4)}"


def bot_create(*, name: str, created_by=None, webhook_path: str = "", **fields) -> tuple[Bot, str]:
    """A new bot and its raw master secret: the only time the secret is returned in clear."""
    bot = Bot(name=name, webhook_path=webhook_path, **fields)
    return bot, bot_save_new(bot=bot, created_by=created_by)


@transaction.atomic
def bot_save_new(*, bot: Bot, created_by=None) -> str:
    """Save an unsaved bot (the admin's form fills one in) with a fresh secret and, if blank, a path."""
    raw = _new_secret()
    bot.webhook_path = bot.webhook_path or _new_path(bot.name)
    bot.secret, bot.secret_rotated_at, bot.created_by = raw, timezone.now(), created_by
    bot.full_clean()
    bot.save()
    audit_record(user=None, actor=created_by, action="bot.created", target=str(bot))
    return raw


@transaction.atomic
def bot_rotate_secret(*, bot: Bot, actor=None) -> str:
    """A new master secret; the old one stops working with this commit. Returns it once."""
    raw = _new_secret()
    bot.secret, bot.secret_rotated_at = raw, timezone.now()
    bot.save(update_fields=["secret", "secret_rotated_at", "updated_at"])
    audit_record(user=None, actor=actor, action="bot.secret_rotated", target=str(bot))
    return raw


def _bot_set_status(bot: Bot, status: str, actor) -> Bot:
    bot.status = status
    bot.save(update_fields=["status", "updated_at"])
    audit_record(user=None, actor=actor, action=f"bot.{status}", target=str(bot))
    return bot


def bot_pause(*, bot: Bot, actor=None) -> Bot:
    return _bot_set_status(bot, Bot.Status.PAUSED, actor)


def bot_resume(*, bot: Bot, actor=None) -> Bot:
    if bot.status == Bot.Status.ARCHIVED:
        raise ValidationError(f"Bot {bot.name} is archived; archived bots cannot be resumed")
    return _bot_set_status(bot, Bot.Status.ACTIVE, actor)


def bot_archive(*, bot: Bot, actor=None) -> Bot:
    return _bot_set_status(bot, Bot.Status.ARCHIVED, actor)


# --- subscriptions -------------------------------------------------------------------------------------------

OVERRIDES = ("leverage", "margin", "lots", "stop_loss_pct", "take_profit_pct")
LIMITS = ("max_daily_loss", "max_concurrent_positions")


def account_fits_bot(account: BrokerAccount, bot: Bot) -> bool:
    """A bot trades on its broker, or on a paper account (paper fills simulate any broker)."""
    return account.broker in (bot.broker, Broker.PAPER)


def subscription_create(*, user, bot: Bot, account: BrokerAccount, **settings) -> Subscription:
    """Subscribe ``account`` (the user's own) to ``bot`` with optional overrides and limits."""
    unknown = set(settings) - set(OVERRIDES) - set(LIMITS)
    if unknown:
        raise TypeError(f"unknown subscription settings: {', '.join(sorted(unknown))}")
    if account.owner_id != user.pk:
        raise ValidationError({"account": "Choose one of your own broker accounts"})
    if not bot.is_active:
        raise ValidationError({"bot": f"Bot {bot.name} is {bot.get_status_display().lower()}: it takes no new "
                                      "subscribers"})
    if not account_fits_bot(account, bot):
        raise ValidationError({"account": f"{bot.name} trades on {bot.get_broker_display()}: choose a "
                                          f"{bot.get_broker_display()} or a paper account, not "
                                          f"{account.get_broker_display()}"})
    from billing.services import limit_check  # the plan's bot limit (paper accounts are free)

    limit_check(user=user, resource="bot", bot=bot, broker=account.broker)
    subscription = Subscription(user=user, bot=bot, account=account, **settings)
    subscription.full_clean(validate_constraints=False)
    try:
        with transaction.atomic():
            subscription.save()
    except IntegrityError as exc:
        raise ValidationError({"account": f"{account.label} is already subscribed to {bot.name}: pause or "
                                          "unsubscribe that subscription first"}) from exc
    audit_record(user=user, action="bot.subscribed", target=str(subscription))
    return subscription


def _subscription_set(subscription: Subscription, status: str, *, actor=None) -> Subscription:
    if subscription.status == Subscription.Status.UNSUBSCRIBED:
        raise ValidationError("This subscription has ended; subscribe again to follow the bot")
    subscription.status = status
    fields = ["status", "updated_at"]
    if status == Subscription.Status.UNSUBSCRIBED:
        subscription.unsubscribed_at = timezone.now()
        fields.append("unsubscribed_at")
    subscription.save(update_fields=fields)
    audit_record(user=subscription.user, actor=actor, action=f"bot.subscription_{status}", target=str(subscription))
    return subscription


def subscription_pause(*, subscription: Subscription, actor=None) -> Subscription:
    return _subscription_set(subscription, Subscription.Status.PAUSED, actor=actor)


def subscription_resume(*, subscription: Subscription, actor=None) -> Subscription:
    return _subscription_set(subscription, Subscription.Status.ACTIVE, actor=actor)


def subscription_unsubscribe(*, subscription: Subscription, close_only: bool, actor=None) -> Subscription:
    """Stop following the bot. ``close_only``: open nothing new but keep executing the bot's exits for the
    positions it opened; otherwise the subscription ends and the bot's alerts no longer reach the account."""
    status = Subscription.Status.CLOSE_ONLY if close_only else Subscription.Status.UNSUBSCRIBED
    return _subscription_set(subscription, status, actor=actor)


@dataclass(frozen=True)
class EffectiveConfig:
    leverage: int
    margin: Decimal
    margin_currency: str
    lots: int
    stop_loss_pct: Decimal | None
    take_profit_pct: Decimal | None
    max_daily_loss: Decimal | None
    max_concurrent_positions: int | None


def _pick(override, default):
    # Seed 004 wrote ``override or default``, which turns a 0 override (e.g. "no stop loss") into the default.
    return default if override is None else override


def effective_config(subscription: Subscription, bot: Bot | None = None) -> EffectiveConfig:
    """Subscription override ← bot default (seed 004 ``_get_effective_config``)."""
    bot = bot or subscription.bot
    s = subscription
    return EffectiveConfig(
        leverage=_pick(s.leverage, bot.default_leverage), margin=_pick(s.margin, bot.default_margin),
        margin_currency=bot.margin_currency, lots=_pick(s.lots, bot.default_lots),
        stop_loss_pct=_pick(s.stop_loss_pct, bot.default_stop_loss_pct),
        take_profit_pct=_pick(s.take_profit_pct, bot.default_take_profit_pct),
        max_daily_loss=s.max_daily_loss, max_concurrent_positions=s.max_concurrent_positions,
    )


# --- the master webhook ---------------------------------------------------------------------------------------

UNAUTHORIZED_MESSAGE = ("Unknown bot or wrong secret: send the bot's master secret in the \"secret\" field of the "
                        "alert body, to the exact webhook URL shown on the bot's page")
_NO_BOT_SECRET = _new_secret()  # compared against when the path is unknown, so both answers take as long


def _authenticate_bot(inbound: Inbound, webhook_path: str, data) -> Bot:
    bot = Bot.objects.filter(webhook_path=webhook_path).first() if len(webhook_path) <= 64 else None
    presented = data.get("secret") if isinstance(data, dict) else None
    presented = presented if isinstance(presented, str) else ""
    expected = bot.secret if bot is not None else _NO_BOT_SECRET
    if hmac.compare_digest(presented.encode(), expected.encode()) and bot is not None:
        return bot
    # Wrong secrets are limited per source address, so guessing one is slow; the bot's own limit is not
    # spent, so a stranger cannot silence a bot by flooding it.
    if rate_limited(inbound, inbound.source_ip or "unknown", django_settings.WEBHOOK_UNKNOWN_KEY_RATE_LIMIT,
                    "webhook.badbot"):
        raise WebhookError(429, "rate_limited", "Too many requests with a wrong bot secret from this address")
    raise WebhookError(401, "unauthorized", UNAUTHORIZED_MESSAGE)


def _alert_time(raw) -> datetime | None:
    """``timestamp`` as TradingView's ``{{timenow}}`` (ISO 8601) or a Unix time in seconds or milliseconds."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float, Decimal)) or (isinstance(raw, str) and raw.strip().isdigit()):
        value = float(raw)
        return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, tz=UTC)
    if isinstance(raw, str):
        parsed = parse_datetime(raw.strip())
        if parsed is not None:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _check_lag(bot: Bot, data: dict, now: datetime) -> None:
    if bot.max_lag_seconds is None:
        return
    raw = data.get("timestamp")
    if raw in (None, ""):
        raise PayloadError({"timestamp": f"is required by this bot (it refuses alerts older than "
                                         f"{bot.max_lag_seconds} s): add \"timestamp\": \"{{{{timenow}}}}\""})
    try:
        sent = _alert_time(raw)
    except (ValueError, OverflowError, OSError):
        sent = None
    if sent is None:
        raise PayloadError({"timestamp": f"must be an ISO 8601 time or a Unix time, got {str(raw)[:40]!r}"})
    lag = (now - sent).total_seconds()
    if lag > bot.max_lag_seconds:
        raise WebhookError(422, "stale_alert", f"Stale alert: sent {lag:.0f} s ago, over this bot's limit of "
                           f"{bot.max_lag_seconds} s; it was not executed", {"timestamp": "stale alert"})


def _check_symbol(bot: Bot, intent: dict) -> None:
    allowed = bot.allowed_symbols
    ticker = intent["option"]["underlying"] if intent.get("option") else intent["symbol"]
    if allowed and intent["action"] != "close_all" and ticker not in allowed:
        raise WebhookError(422, "symbol_not_allowed", f"{ticker} is not traded by bot {bot.name} (allowed: "
                           f"{', '.join(allowed)})", {"ticker": f"{ticker} is not in the bot's allow-list"})


def receiving_statuses(intent: dict) -> tuple[str, ...]:
    """Who an alert reaches: entries only active subscriptions; exits also the close-only ones."""
    if intent["action"] == "entry":
        return (Subscription.Status.ACTIVE,)
    return (Subscription.Status.ACTIVE, Subscription.Status.CLOSE_ONLY)


def bot_signal_receive(inbound: Inbound, *, webhook_path: str) -> Reply:
    """``POST /api/v1/bots/webhook/master/<path>``: authenticate, check, store once, enqueue ONE fan-out."""
    bot, data, payload_text = None, None, ""
    try:
        check_request(inbound)
        data = parse_json(inbound.body)
        payload_text = stored_payload(data)
        bot = _authenticate_bot(inbound, webhook_path, data)
        if bot.status == Bot.Status.PAUSED:
            raise WebhookError(423, "bot_paused", f"Bot {bot.name} is paused: alerts are not executed until an "
                               "admin resumes it")
        if bot.status == Bot.Status.ARCHIVED:
            raise WebhookError(409, "bot_archived", f"Bot {bot.name} is archived and executes no alerts")
        if rate_limited(inbound, f"bot{bot.pk}", bot.rate_limit, "webhook.bot"):
            raise WebhookError(429, "rate_limited", f"Too many alerts for bot {bot.name} (limit {bot.rate_limit}); "
                               "slow down and retry")
        try:
            intent = parse_bot(data, market_type=bot.market_type)
            client_id = client_id_of(data)
            _check_lag(bot, data, inbound.received_at)
        except PayloadError as exc:
            raise invalid_fields(exc, data) from exc
        _check_symbol(bot, intent)
        return _accept(inbound, bot, intent, client_id, payload_text)
    except WebhookError as exc:
        return error_reply(inbound, exc, data=data, payload_text=payload_text,
                           bot=bot if exc.status != 401 else None)


def _accept(inbound: Inbound, bot: Bot, intent: dict, client_id: str, payload_text: str) -> Reply:
    from bots.tasks import bot_signal_fanout_task
    from tradeflow.queue import enqueue

    def store(signal_id, body_hash: str) -> Reply:
        # One COUNT whatever the number of subscribers: the per-subscriber work is the fan-out task's.
        total = Subscription.objects.filter(bot=bot, status__in=receiving_statuses(intent)).count()
        reply = Reply(202, {"signal_id": str(signal_id), "status": "accepted", "total_subscribers": total})
        signal = Signal.objects.create(
            id=signal_id, bot=bot, format=Signal.Format.BOT, client_id=client_id, body_hash=body_hash,
            payload=json.loads(payload_text), intent=intent, source_ip=inbound.source_ip,
            received_at=inbound.received_at, ack_ms=webhook_services.elapsed_ms(inbound), total_subscribers=total,
        )
        log_request(inbound, reply, bot=bot, signal=signal, payload=payload_text)
        enqueue(bot_signal_fanout_task, str(signal.pk))
        return reply

    def existing():
        return Signal.objects.filter(bot=bot, client_id=client_id).values_list("id", flat=True).first()

    return accept_once(inbound, target=f"bot{bot.pk}", client_id=client_id, payload_text=payload_text,
                       log_target={"bot": bot}, store=store, existing=existing)
