"""The bot's master webhook URL and TradingView alert messages, ready to copy (admin page, seed_demo)."""

from __future__ import annotations

import json

from django.conf import settings
from django.urls import reverse

from bots.models import Bot

SECRET_PLACEHOLDER = "<bot-secret: shown once at creation or rotation; rotate to see a new one>"


def bot_webhook_url(bot: Bot) -> str:
    return settings.PUBLIC_URL + reverse("bot-master-webhook", kwargs={"webhook_path": bot.webhook_path})


def tradingview_message(bot: Bot, *, secret: str | None, action: str = "buy") -> str:
    """The alert message: JSON once TradingView has replaced the placeholders (``{{close}}`` is a bare number)."""
    fields = [("ticker", json.dumps("{{ticker}}")), ("action", json.dumps(action)),
              ("secret", json.dumps(secret or SECRET_PLACEHOLDER))]
    if bot.market_type == Bot.MarketType.OPTIONS:
        fields += [("strike", "{{plot_0}}"), ("type", json.dumps("PE"))]
    fields.append(("price", "{{close}}"))
    if bot.max_lag_seconds is not None:
        fields.append(("timestamp", json.dumps("{{timenow}}")))
    fields.append(("id", json.dumps("{{strategy.order.id}}-{{timenow}}")))
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in fields) + "}"


def bot_curl(bot: Bot, *, secret: str, symbol: str = "BTCUSDT", price: str = "95234.5") -> str:
    body = {"ticker": symbol, "action": "buy", "secret": secret, "price": float(price)}
    if bot.market_type == Bot.MarketType.OPTIONS:
        body |= {"strike": 25000, "type": "PE"}
    return f"curl -s -X POST {bot_webhook_url(bot)} -H 'Content-Type: text/plain' -d '{json.dumps(body)}'"


def bot_examples(bot: Bot, *, secret: str | None) -> dict:
    return {"url": bot_webhook_url(bot), "secret": secret,
            "messages": {a: tradingview_message(bot, secret=secret, action=a) for a in ("buy", "sell", "close")}}
