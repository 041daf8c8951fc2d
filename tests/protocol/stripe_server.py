"""A local Stripe for tests: ``localstripe`` plus the Checkout and customer-portal sessions it lacks.

The real ``stripe`` client talks to it over loopback (``STRIPE_API_BASE = server.url``). localstripe answers
customers, products, plans (a plan id is accepted where Stripe takes a price id), payment methods, subscriptions
and invoices the way Stripe does (form-encoded requests, ``Authorization: Bearer sk_…``, Stripe's error bodies).
Added on the same aiohttp app:

- ``POST /v1/checkout/sessions`` (``mode=subscription``; the customer and the line item's price must exist),
  ``GET /v1/checkout/sessions/{id}``;
- ``POST /v1/billing_portal/sessions`` (the customer must exist).

:meth:`StripeServer.pay` plays the customer paying on the Checkout page: a card, an active subscription on the
session's price, the session ``complete``. :func:`signed` builds a webhook request exactly as Stripe signs one:
``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.

localstripe keeps one in-memory store per process and its app can be served once, so the server starts on the
first use and each ``with StripeServer()`` starts from an empty store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
import warnings

import stripe
from aiohttp import web

with warnings.catch_warnings():
    # localstripe registers plain-function routes, which aiohttp 3.x still serves but warns about.
    warnings.simplefilter("ignore", DeprecationWarning)
    from localstripe import resources, server
    from localstripe.errors import UserError

API_KEY = "sk_test_tradeflow_local"
# localstripe pickles its store to /tmp after every write; tests keep it in memory.
resources.Store.dump_to_disk = lambda self: None

SESSIONS: dict[str, dict] = {}
_started: dict[str, str] = {}
_lock = threading.Lock()


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


async def _checkout_create(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    items = data.get("line_items") or []
    if data.get("mode") != "subscription" or len(items) != 1 or not items[0].get("price"):
        raise UserError(400, "Only mode=subscription with one line item is supported here")
    if not data.get("success_url") or not data.get("cancel_url"):
        raise UserError(400, "Missing required param: success_url / cancel_url")
    resources.Customer._api_retrieve(data["customer"])  # 404 like Stripe for an unknown customer
    resources.Plan._api_retrieve(items[0]["price"])  # 404 for an unknown price
    session_id = _new_id("cs_test_")
    base = f"{request.scheme}://{request.host}"
    session = {
        "id": session_id, "object": "checkout.session", "mode": "subscription", "status": "open",
        "payment_status": "unpaid", "customer": data["customer"], "subscription": None,
        "client_reference_id": data.get("client_reference_id"), "metadata": data.get("metadata") or {},
        "success_url": data["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id),
        "cancel_url": data["cancel_url"], "url": f"{base}/checkout/pay/{session_id}", "livemode": False,
        "created": int(time.time()), "_price": items[0]["price"],
        "_subscription_metadata": (data.get("subscription_data") or {}).get("metadata") or {},
    }
    SESSIONS[session_id] = session
    return _public(session)


async def _checkout_get(request: web.Request) -> web.Response:
    session = SESSIONS.get(request.match_info["id"])
    if session is None:
        raise UserError(404, f"No such checkout.session: '{request.match_info['id']}'")
    return _public(session)


async def _portal_create(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    resources.Customer._api_retrieve(data.get("customer") or "")
    session_id = _new_id("bps_")
    base = f"{request.scheme}://{request.host}"
    return server.json_response({"id": session_id, "object": "billing_portal.session", "customer": data["customer"],
                                 "return_url": data.get("return_url"), "url": f"{base}/portal/{session_id}",
                                 "livemode": False, "created": int(time.time())})


def _public(session: dict) -> web.Response:
    return server.json_response({k: v for k, v in session.items() if not k.startswith("_")})


def _serve() -> str:
    with _lock:
        if "url" in _started:
            return _started["url"]
        server.app.router.add_post("/v1/checkout/sessions", _checkout_create)
        server.app.router.add_get("/v1/checkout/sessions/{id}", _checkout_get)
        server.app.router.add_post("/v1/billing_portal/sessions", _portal_create)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(server.app, access_log=None)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, name="local-stripe", daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("the local Stripe server did not start")
        _started["url"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return _started["url"]


class StripeServer:
    def __enter__(self) -> StripeServer:
        self.url = _serve()
        resources.store.clear()
        SESSIONS.clear()
        self.client = stripe.StripeClient(API_KEY, base_addresses={"api": self.url})
        return self

    def __exit__(self, *exc) -> None:
        resources.store.clear()
        SESSIONS.clear()

    def price(self, price_id: str, *, amount: int, name: str) -> None:
        """A monthly price (a localstripe plan with that id) in cents."""
        product = self.client.v1.products.create(params={"name": name})
        self.client.v1.plans.create(params={"id": price_id, "product": product.id, "amount": amount,
                                            "currency": "usd", "interval": "month"})

    def session(self, session_id: str) -> dict:
        return SESSIONS[session_id]

    def pay(self, session_id: str) -> dict:
        """The customer pays on the Checkout page: returns the completed session (as Stripe's event carries it)."""
        session = SESSIONS[session_id]
        card = self.client.v1.payment_methods.create(params={
            "type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
        self.client.v1.payment_methods.attach(card.id, params={"customer": session["customer"]})
        self.client.v1.customers.update(session["customer"],
                                        params={"invoice_settings": {"default_payment_method": card.id}})
        sub = self.client.v1.subscriptions.create(params={
            "customer": session["customer"], "items": [{"plan": session["_price"]}],
            "metadata": session["_subscription_metadata"]})
        session.update(status="complete", payment_status="paid", subscription=sub.id)
        return {k: v for k, v in session.items() if not k.startswith("_")}

    def subscription(self, sub_id: str) -> dict:
        return self.client.v1.subscriptions.retrieve(sub_id).to_dict()


def event(kind: str, obj: dict, *, created: int | None = None, event_id: str | None = None) -> dict:
    """A Stripe event envelope as webhooks deliver it."""
    return {"id": event_id or _new_id("evt_"), "object": "event", "type": kind, "api_version": "2026-05-27.dahlia",
            "created": int(time.time()) if created is None else created, "livemode": False,
            "data": {"object": obj}, "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}}


def signed(payload: dict | str, secret: str, *, timestamp: int | None = None) -> tuple[str, str]:
    """(raw body, Stripe-Signature header) exactly as Stripe sends them."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return body, f"t={t},v1={mac}"
