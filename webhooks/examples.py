"""Copy-ready TradingView alert messages for an account (shown on its page and printed by seed_demo)."""

from __future__ import annotations

import json

from django.conf import settings
from django.urls import reverse

KEY_PLACEHOLDER = "<your-webhook-key>"


def webhook_url(raw_key: str | None) -> str:
    if not raw_key:  # the placeholder is not a valid key, so the key route cannot reverse it
        return f"{settings.PUBLIC_URL}{reverse('account-webhook')}/{KEY_PLACEHOLDER}"
    return settings.PUBLIC_URL + reverse("account-webhook-key", kwargs={"api_key": raw_key})


def webhook_examples(*, account, raw_key: str | None) -> dict:
    options = {"signal": "S1", "strike": "{{plot_0}}", "type": "PE", "action": "ENTRY", "spot_price": "{{close}}",
               "id": "{{strategy.order.id}}-{{timenow}}"}
    unify = {"version": "unify.v1", "intent": {
        "side": "{{strategy.order.action}}", "type": "market", "symbol": "{{ticker}}",
        "qty": "{{strategy.order.contracts}}", "price": "{{close}}",
        "sl": {"mode": "pct", "value": 1.0}, "tp": {"mode": "rr", "value": 2.0}}}
    return {
        "url": webhook_url(raw_key),
        "options_json": json.dumps(options, indent=2),
        "unify_json": json.dumps(unify, indent=2),
    }


def curl_example(raw_key: str) -> str:
    body = json.dumps({"version": "unify.v1", "intent": {"side": "buy", "type": "market", "symbol": "NIFTYBEES",
                                                         "qty": 10, "price": 265.40,
                                                         "sl": {"mode": "pct", "value": 1}}})
    return f"curl -s -X POST {webhook_url(raw_key)} -H 'Content-Type: text/plain' -d '{body}'"
