from __future__ import annotations

import asyncio
import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from brokers.live import ADMINS_GROUP, prices_group, user_group
from brokers.selectors import position_snapshot


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """``ws/live/``: a snapshot of open positions on connect, then execution and price events.

    A customer joins only their own group; staff also join the admins' group.
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.user_key, self.sees_all = str(user.pk), user.is_staff
        self.groups_joined = [user_group(user.pk), prices_group(user.pk)] + ([ADMINS_GROUP] if user.is_staff else [])
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_snapshot()
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

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def live_event(self, message: dict) -> None:
        await self.send_json(message["event"])

    async def live_prices(self, message: dict) -> None:
        """A price tick: staff forward the admins' message (every row), a customer only their own rows."""
        if message.get("admins"):
            rows = message["rows"] if self.sees_all else None
        else:
            rows = None if self.sees_all else message["by_user"].get(self.user_key)
        if rows:
            await self.send_json({"kind": "prices", "ts": message["ts"], "positions": rows})
