"""The webhook receivers' own ASGI path: alerts go straight to the receive services, around Django's request cycle.

A webhook POST needs none of what Django's request cycle does for a page (sessions, CSRF, auth, messages,
allauth, WhiteNoise, URL resolving, a per-request thread-sensitive executor that starts and joins a thread):
measured in-process, that machinery cost about 3 ms of CPU per alert, as much as the receive itself.
This path hands the same ``Inbound`` to the same services (``webhook_receive``, ``bot_signal_receive``) on a
small pool of long-lived threads (connections from the psycopg pool, as Django's), and writes their ``Reply`` as JSON.
So answers, log rows, limits and de-duplication are the services' own, whichever way a request came in: the
Django views stay for the test client, for anything but POST, and for paths this router does not match.
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import close_old_connections

from webhooks.services import Inbound, Reply

ACCOUNT = re.compile(r"/api/v1/webhooks(?:/(?P<key>[A-Za-z0-9_\-]{1,200}))?/?")
BOT = re.compile(r"/api/v1/bots/webhook/master/(?P<path>[A-Za-z0-9_\-]{1,200})/?")


def _receive(inbound: Inbound, bot_path: str | None) -> Reply:
    from bots.services import bot_signal_receive
    from webhooks.services import webhook_receive

    if bot_path is not None:
        return bot_signal_receive(inbound, webhook_path=bot_path)
    return webhook_receive(inbound)


def _receive_on_pool_thread(inbound: Inbound, bot_path: str | None) -> Reply:
    try:
        return _receive(inbound, bot_path)
    finally:
        # What Django does when a request finishes: in the web process this hands the connection back to the
        # psycopg pool (settings: CONN_MAX_AGE 0 with a pool), elsewhere it honours CONN_MAX_AGE.
        close_old_connections()


async def _read_body(receive, limit: int) -> tuple[bytes, int, bool]:
    """The body, up to ``limit`` + 1 bytes (past that it is refused whatever it says); ``False`` on disconnect."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", size, False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit + 1:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), size, True


class WebhookRouter:
    """ASGI middleware: POSTs to the two webhook receivers are answered here, everything else goes to ``app``."""

    def __init__(self, app, *, threads: int | None = None, thread_sensitive: bool = False):
        self.app = app
        if thread_sensitive:  # tests: run the receive on the caller's thread (and its test transaction)
            self.run_receive = sync_to_async(_receive, thread_sensitive=True)
        else:
            executor = ThreadPoolExecutor(max_workers=threads or settings.WEBHOOK_THREADS,
                                          thread_name_prefix="webhook")

            async def run_receive(*args):
                return await asyncio.get_running_loop().run_in_executor(executor, _receive_on_pool_thread, *args)

            self.run_receive = run_receive

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"]
        account = bot = None
        if path.startswith("/api/v1/webhooks"):
            account = ACCOUNT.fullmatch(path)
        elif path.startswith("/api/v1/bots/webhook/master/"):
            bot = BOT.fullmatch(path)
        if account is None and bot is None:
            return await self.app(scope, receive, send)

        headers = dict(scope["headers"])
        try:
            declared = int(headers.get(b"content-length") or 0)
        except ValueError:
            declared = 0
        limit = settings.WEBHOOK_MAX_BODY_BYTES
        body, size, connected = (b"", declared, True) if declared > limit else await _read_body(receive, limit)
        if not connected:
            return
        auth = headers.get(b"authorization", b"").decode("latin-1")
        client = scope.get("client")
        inbound = Inbound(
            request=None, method="POST", path=path, body=body if size <= limit else b"",
            declared_length=max(declared, size), source_ip=client[0] if client else None,
            path_key=(account.group("key") or "") if account else "",
            bearer=auth[7:].strip() if auth[:7].lower() == "bearer " else "",
        )
        reply = await self.run_receive(inbound, bot.group("path") if bot else None)
        payload = json.dumps(reply.body, cls=DjangoJSONEncoder).encode()
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
