"""A test client that sends requests through an ASGI application, the way uvicorn does.

It has the slice of Django's test client the webhook tests use (``post``/``get``/…, ``status_code``,
``content``, ``json()``, ``response[header]``), so the same tests run against the webhook receivers' ASGI
path (webhooks/asgi.py) and against the Django views.
"""

from __future__ import annotations

import asyncio
import json

from asgiref.sync import async_to_sync
from django.core.signals import request_finished, request_started
from django.db import close_old_connections


class AsgiResponse:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], content: bytes):
        self.status_code, self.content = status, content
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}

    def json(self):
        return json.loads(self.content)

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]


async def asgi_request(app, method: str, path: str, data=b"", content_type: str = "application/octet-stream",
                       headers: dict | None = None, **extra) -> AsgiResponse:
    """One HTTP request through an ASGI ``app``, as uvicorn would hand it over; many can run at once."""
    body = data.encode() if isinstance(data, str) else (data or b"")
    raw = [(b"host", b"testserver"), (b"content-type", content_type.encode()),
           (b"content-length", str(extra.get("CONTENT_LENGTH", len(body))).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method.upper(),
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": raw, "client": (extra.get("REMOTE_ADDR", "127.0.0.1"), 50000),
             "server": ("testserver", 80)}
    sent: list[dict] = []
    delivered = []

    async def receive():
        if not delivered:
            delivered.append(True)
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected until the app answers (then it is cancelled)

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return AsgiResponse(start["status"], start.get("headers", []), content)


class AsgiClient:
    def __init__(self, app):
        self.app = app

    def generic(self, method: str, path: str, data=b"", content_type: str = "application/octet-stream",
                headers: dict | None = None, **extra) -> AsgiResponse:
        # As Django's test client does: a finished request must not close the test's database connection.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            return async_to_sync(asgi_request)(self.app, method, path, data, content_type, headers, **extra)
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)

    def post(self, path: str, data=None, content_type: str = "application/octet-stream", **kwargs):
        if data is not None and not isinstance(data, (str, bytes)):
            data = json.dumps(data)
        return self.generic("POST", path, data or b"", content_type, **kwargs)

    def get(self, path: str, **kwargs):
        return self.generic("GET", path, **kwargs)

    def put(self, path: str, **kwargs):
        return self.generic("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs):
        return self.generic("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs):
        return self.generic("DELETE", path, **kwargs)


def webhook_router_client() -> AsgiClient:
    """The ASGI app uvicorn serves, with the webhook receive run on the test's thread (its transaction)."""
    from django.core.asgi import get_asgi_application

    from webhooks.asgi import WebhookRouter

    return AsgiClient(WebhookRouter(get_asgi_application(), thread_sensitive=True))
