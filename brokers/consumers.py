from __future__ import annotations

import asyncio
import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from brokers.hub import PriceHub
from brokers.live import ADMINS_GROUP, user_group
from brokers.selectors import position_snapshot


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """``ws/live/``: a snapshot of open positions on connect, then execution and price events.

    A customer joins only their own group; staff also join the admins' group. Price ticks come from this
    process's ``PriceHub`` (one decode per process, not one per socket): a customer's own rows, the staff's all.
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.user_key, self.sees_all = str(user.pk), user.is_staff
        self.groups_joined = [user_group(user.pk)] + ([ADMINS_GROUP] if user.is_staff else [])
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        self.price_hub = await PriceHub.for_layer(self.channel_layer)
        await self.accept()
        await self.send_snapshot()
        self.price_hub.add(self, user_key=self.user_key, staff=self.sees_all)
        if settings.SIMULATED_FEED:  # the embedded demo: started by the first watcher, on this server's loop
            from brokers.services.prices import simulated_feed_start

            simulated_feed_start(asyncio.get_running_loop())

    async def send_snapshot(self) -> None:
        snapshot = await database_sync_to_async(position_snapshot)(user=self.scope["user"])
        await self.send_json({"kind": "snapshot", "positions": snapshot})

    @classmethod
    async def decode_json(cls, text_data):
        try:
            return json.loads(text_data)
        except ValueError:  # a garbled message is ignored, not a reason to drop the socket
            return None

    async def receive_json(self, content, **kwargs) -> None:
        """The client asks again after it missed events (a reconnect, a tab woken from sleep)."""
        if isinstance(content, dict) and content.get("action") == "snapshot":
            await self.send_snapshot()

    async def __call__(self, scope, receive, send):
        """The hub holds this socket until it ends, however it ends: Channels calls ``disconnect`` when the client
        goes, not when a handler raised (a database blip in the snapshot, a send to a socket closing meanwhile)."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            if hub := getattr(self, "price_hub", None):
                hub.discard(self, user_key=self.user_key)

    async def disconnect(self, code: int) -> None:
        if hub := getattr(self, "price_hub", None):
            hub.discard(self, user_key=self.user_key)
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def dispatch(self, message: dict) -> None:
        """Execution events go straight to their handler. Channels first closes stale database connections before
        every handler (a hop to a thread and back); this handler touches no database. The rest (connect, the
        client's own messages, whose snapshot reads the database through ``database_sync_to_async``) keeps
        Channels' path."""
        if message.get("type") == "live.event":
            await self.live_event(message)
        else:
            await super().dispatch(message)

    async def live_event(self, message: dict) -> None:
        await self.send_json(message["event"])
