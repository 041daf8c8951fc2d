"""The webhook receivers' own ASGI path: alerts go straight to the receive services, around Django's request cycle.

A webhook POST needs none of what Django's request cycle does for a page (sessions, CSRF, auth, messages,
allauth, WhiteNoise, URL resolving, a per-request thread-sensitive executor that starts and joins a thread):
measured in-process, that machinery cost about 3 ms of CPU per alert, as much as the receive itself.
This path hands the same ``Inbound`` to the same services (``webhook_receive_many``, ``bot_signal_receive``) on a
small pool of long-lived threads (connections from the psycopg pool, as Django's), and writes their ``Reply`` as JSON.
So answers, log rows, limits and de-duplication are the services' own, whichever way a request came in: the
Django views stay for the test client, for anything but POST, and for paths this router does not match.

Account alerts are received in natural batches (group commit): a request that finds a receiver free is handled
at once, alone; requests that arrive while ``WEBHOOK_RECEIVERS`` batches are in flight wait for the next free
receiver and go through together, up to ``WEBHOOK_RECEIVE_BATCH``. No timer holds an alert back. A quiet server
answers each alert as before; a busy one shares the round trips (rate limit, key lookup, de-duplication, the
store, the drain message) among the alerts of a batch, which is what keeps up with a burst.
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


def _receive_bot(inbound: Inbound, bot_path: str) -> Reply:
    from bots.services import bot_signal_receive

    return bot_signal_receive(inbound, webhook_path=bot_path)


def _receive_accounts(inbounds: list[Inbound]) -> list[Reply]:
    from webhooks.services import webhook_receive_many

    return webhook_receive_many(inbounds)


def _on_pool_thread(function, *args):
    try:
        return function(*args)
    finally:
        # What Django does when a request finishes: in the web process this hands the connection back to the
        # psycopg pool (settings: CONN_MAX_AGE 0 with a pool), elsewhere it honours CONN_MAX_AGE.
        close_old_connections()


class Batcher:
    """Natural batching of account alerts: at most ``receivers`` batches in flight, each of what was waiting."""

    def __init__(self, run, *, receivers: int, size: int):
        self.run, self.receivers, self.size = run, receivers, size
        self.waiting: list[tuple[Inbound, asyncio.Future]] = []
        self.busy = 0
        self.tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    async def receive(self, inbound: Inbound) -> Reply:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((inbound, future))
        if self.busy < self.receivers:
            self.busy += 1
            task = asyncio.ensure_future(self._receiver())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _receiver(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[:self.size], self.waiting[self.size:]
                try:
                    replies = await self.run([inbound for inbound, _ in batch])
                except BaseException as exc:  # every request of the batch fails as a lone request would
                    for _, future in batch:
                        if future.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):  # the server is stopping
                            future.cancel()
                        else:
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():
                        future.set_result(reply)
        finally:
            self.busy -= 1


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
            self.run_bot = sync_to_async(_receive_bot, thread_sensitive=True)
            run_accounts = sync_to_async(_receive_accounts, thread_sensitive=True)
        else:
            executor = ThreadPoolExecutor(max_workers=threads or settings.WEBHOOK_THREADS,
                                          thread_name_prefix="webhook")

            async def run_bot(*args):
                return await asyncio.get_running_loop().run_in_executor(executor, _on_pool_thread, _receive_bot,
                                                                        *args)

            async def run_accounts(inbounds):
                return await asyncio.get_running_loop().run_in_executor(executor, _on_pool_thread,
                                                                        _receive_accounts, inbounds)

            self.run_bot = run_bot
        self.batcher = Batcher(run_accounts, receivers=settings.WEBHOOK_RECEIVERS, size=settings.WEBHOOK_RECEIVE_BATCH)

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
        reply = await (self.run_bot(inbound, bot.group("path")) if bot else self.batcher.receive(inbound))
        payload = json.dumps(reply.body, cls=DjangoJSONEncoder).encode()
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
