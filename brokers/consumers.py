from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from brokers.live import ADMINS_GROUP, user_group
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
        self.groups_joined = [user_group(user.pk)] + ([ADMINS_GROUP] if user.is_staff else [])
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        snapshot = await database_sync_to_async(position_snapshot)(user=user)
        await self.send_json({"kind": "snapshot", "positions": snapshot})

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def live_event(self, message: dict) -> None:
        await self.send_json(message["event"])
